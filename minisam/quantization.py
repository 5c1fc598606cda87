"""Post-training weight quantization of the frozen SAM weights with bitsandbytes (NF4, INT8).

The frozen linears are quantized in three groups: the image encoder's ``blocks[i].attn.qkv`` /
``attn.proj`` (group "attn") and ``blocks[i].mlp.lin1`` / ``mlp.lin2`` (group "mlp"), and every
linear of the mask decoder (group "decoder": its two-way transformer's attention and MLPs, the
hypernetwork MLPs and the IoU head). Convolutions (patch embedding, encoder neck, mask upscaling),
norms, position embeddings and the prompt encoder stay fp32.

Schemes are strings: ``"nf4"`` (a bare kind means the encoder groups, "attn" and "mlp"),
``"int8:attn"``, ``"nf4:attn,mlp"``, ``"nf4:all"`` (encoder and decoder; aliases "encoder" and
"all" name group sets, and contain no comma, so they fit in ``--config`` strings), or mixed
precision per group (AdaLoRA-QAT style selective quantization) ``"nf4:mlp+int8:attn"``.
With a small encoder the mask decoder holds most of the weights: quantizing only the encoder
leaves the file far above a quarter of fp32 (see docs/bench/cpu.md).

* NF4: ``bnb.nn.Linear4bit(quant_type="nf4", compress_statistics=True)``: 4-bit NormalFloat codes,
  one absmax per 64 weights, absmax itself 8-bit quantized (double quant).
* INT8: ``bnb.nn.Linear8bitLt(has_fp16_weights=False, threshold=0)``: per-output-row absmax int8
  (LLM.int8() without outlier decomposition). bitsandbytes 0.50.2's CPU int8 works only for 2D input:
  its default ``int8_vectorwise_quant`` takes the row maximum over dim 1, so the encoder's
  (B, H, W, C) activations fail with a shape error. :class:`Linear8bitFlat` flattens to 2D around
  bnb's forward (harmless on CUDA). torch's own ``quantize_dynamic`` was not used: torch 2.13 marks
  ``torch.ao.quantization`` deprecated for removal.

CPU speed, measured for this module (torch 2.13 CPU, bitsandbytes 0.50.2, 2-core AMD EPYC with
AVX512-BF16/VNNI, otherwise idle): image_encoder forward of a random model on a 1-image batch,
min / median of 15 interleaved repeats, in ms::

                               OMP_NUM_THREADS=1             default (2 threads)
                               small 256px   compact 512px   small 256px   compact 512px
    fp32                        46 / 50       504 / 525       26 / 29       278 / 295
    NF4 "bnb-bf16" (default)    40 / 43       438 / 470       23 / 26       240 / 254
    NF4 "bnb" (fp32 compute)    49 / 53       515 / 568       29 / 31       284 / 309
    NF4 "dequantize"            45 / 49       507 / 555       27 / 28       260 / 286
    INT8 "bnb" (default)        38 / 42       364 / 403       25 / 27       206 / 222
    INT8 "dequantize"           46 / 49       500 / 539       27 / 29       267 / 292

(Earlier runs with a training job on both cores were 1-3x slower and noisy but ranked the same.)
NF4 through bnb's generic path is smaller, not faster: it dequantizes every weight, then runs the
same fp32 matmul. bnb's fused AVX512-BF16 kernel (``gemv_4bit`` on a repacked copy, bf16
activations) is 12-14 % faster than fp32 and changes the X-ray embedding of the trained default
by as little as the fp32 path (relative L2 error 0.0123 both). INT8 (AVX512-VNNI ``torch._int_mm``)
is the fastest: 5-28 % below fp32.

``cpu_strategy`` chooses what runs on CPU; the stored format stays quantized either way:

* "bnb-bf16": bnb's fused kernel on a private repacked copy (built at the first eval forward;
  memory ~2x the 4-bit weights); falls back to "bnb" on CPUs without AVX512-BF16, in training
  mode and when gradients are needed (the fused kernel has no autograd). NF4 only; INT8 "bnb".
* "bnb": bitsandbytes' generic layers (fp32 compute for NF4; for INT8, activations cast to fp16
  and quantized per row to int8, then an int8 matmul).
* "dequantize": fp32 ``nn.Linear`` copies made once from the quantized weights (fp32 speed and
  memory, plus the kept quantized tensors for saving).

Defaults (``DEFAULT_CPU_STRATEGY``), the fastest measured: NF4 "bnb-bf16", INT8 "bnb". bnb's own
Linear4bit would also pick the fused kernel, but by repacking its weight in place on the first CPU
call, which loses the double-quant statistics (lossy to undo) and autograd; MiniSAM's layers never
do that. On CUDA the plain bitsandbytes path is used.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from minisam.checkpoints import LoadedModel, weights_hash
from minisam.errors import ModelError

GROUPS: tuple[str, ...] = ("attn", "mlp", "decoder")
ENCODER_GROUPS: tuple[str, ...] = ("attn", "mlp")  # what a bare kind ("nf4") quantizes
GROUP_ALIASES: dict[str, tuple[str, ...]] = {"encoder": ENCODER_GROUPS, "all": GROUPS}
KINDS: tuple[str, ...] = ("fp32", "nf4", "int8")
CPU_STRATEGIES: tuple[str, ...] = ("bnb-bf16", "bnb", "dequantize")
# Fastest measured on CPU per kind (see the module docstring); INT8 has no bf16 kernel.
DEFAULT_CPU_STRATEGY: dict[str, str] = {"nf4": "bnb-bf16", "int8": "bnb"}

# Encoder-relative names of the quantizable linears and the group each belongs to.
_LAYER_NAME = re.compile(r"^blocks\.\d+\.(?P<group>attn|mlp)\.(qkv|proj|lin1|lin2)$")
_ENCODER = "image_encoder."
# Mask-decoder-relative names of its linears (segment-anything's MaskDecoder / TwoWayTransformer).
_DECODER_LAYER_NAME = re.compile(
    r"^(transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
    r"|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|out_proj)"
    r"|transformer\.layers\.\d+\.mlp\.lin[12]"
    r"|(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.\d+)$"
)
_DECODER = "mask_decoder."


@dataclass(frozen=True)
class QuantScheme:
    """Which precision each group of encoder linears gets.

    Arguments:
      assignments: (group, kind) for every group of :data:`GROUPS`, in that order.
    """

    assignments: tuple[tuple[str, str], ...]

    @classmethod
    def uniform(cls, kind: str, groups: Iterable[str] = ENCODER_GROUPS) -> QuantScheme:
        """``kind`` for ``groups``, fp32 for the other groups."""
        chosen = set(groups)
        return cls(tuple((g, kind if g in chosen else "fp32") for g in GROUPS))

    def kind_for(self, group: str) -> str:
        """The precision of ``group`` ("fp32" when not quantized)."""
        return dict(self.assignments).get(group, "fp32")

    @property
    def groups(self) -> tuple[str, ...]:
        """The quantized groups."""
        return tuple(g for g, k in self.assignments if k != "fp32")

    @property
    def kind(self) -> str:
        """ "fp32" (nothing quantized), the single quantized kind, or "mixed"."""
        kinds = {k for _, k in self.assignments if k != "fp32"}
        if not kinds:
            return "fp32"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def __str__(self) -> str:
        """The canonical spec, e.g. "nf4:attn,mlp" or "int8:attn+nf4:mlp"."""
        by_kind: dict[str, list[str]] = {}
        for group, kind in self.assignments:
            if kind != "fp32":
                by_kind.setdefault(kind, []).append(group)
        if not by_kind:
            return "fp32"
        return "+".join(f"{k}:{','.join(gs)}" for k, gs in sorted(by_kind.items()))


def parse_scheme(spec: str | QuantScheme) -> QuantScheme:
    """Parse "nf4", "int8:attn", "nf4:attn,mlp", "nf4:all" or "nf4:mlp+int8:attn".

    Returns:
      the scheme; groups not named in any part stay fp32, a bare kind applies to the encoder
      groups (:data:`ENCODER_GROUPS`); "encoder" and "all" expand as in :data:`GROUP_ALIASES`.

    Raises:
      ModelError: unknown kind or group, a group named twice, or an empty spec.
    """
    if isinstance(spec, QuantScheme):
        return spec
    text = str(spec).strip().lower()
    if not text:
        raise ModelError(
            "empty quantization scheme; use e.g. 'nf4', 'int8:attn' or 'nf4:mlp+int8:attn'"
        )
    chosen: dict[str, str] = {}
    for part in text.split("+"):
        kind, _, group_text = part.strip().partition(":")
        kind = kind.strip()
        if kind not in KINDS:
            raise ModelError(
                f"quantization scheme {spec!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}"
            )
        named = [g.strip() for g in group_text.split(",")] if group_text.strip() else ["encoder"]
        groups = [g for name in named for g in GROUP_ALIASES.get(name, (name,))]
        for group in groups:
            if group not in GROUPS:
                raise ModelError(
                    f"quantization scheme {spec!r}: unknown layer group {group!r}; "
                    f"known: {', '.join((*GROUPS, *GROUP_ALIASES))}"
                )
            if group in chosen:
                raise ModelError(f"quantization scheme {spec!r}: group {group!r} is given twice")
            chosen[group] = kind
    return QuantScheme(tuple((g, chosen.get(g, "fp32")) for g in GROUPS))


@dataclass
class QuantReport:
    """What :func:`quantize_encoder` did.

    Attributes:
      scheme: canonical spec of the scheme applied.
      layers: full module name -> kind for every quantized layer.
      bytes_before: bytes of the weights (parameters and buffers) of the quantized parts before:
        the image encoder, plus the mask decoder when its group is quantized.
      bytes_after: bytes those weights occupy in memory afterwards (quantization statistics
        included; with cpu_strategy "dequantize" the fp32 copies plus the kept quantized payload).
      stored_bytes: bytes of those weights in quantized storage (what a quantized checkpoint
        holds for them).
      cpu_strategy: layer kind -> strategy used on CPU (empty on CUDA).
    """

    scheme: str
    layers: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    stored_bytes: int = 0
    cpu_strategy: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        mib = 1024 * 1024
        return (
            f"{self.scheme}: {len(self.layers)} linears quantized; their parts' weights "
            f"{self.bytes_before / mib:.1f} MiB -> {self.bytes_after / mib:.1f} MiB in memory, "
            f"{self.stored_bytes / mib:.1f} MiB stored"
        )


# bitsandbytes log lines that are noise for MiniSAM: the optional "kernels" package would only
# replace bnb's built-in fused CPU kernel, and the fp16 cast of int8 inputs is logged on every call.
_BNB_NOISE = ("Failed to load CPU gemm_4bit_forward", "MatMul8bitLt: inputs will be cast")
_BNB_NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions")


class _DropBnbNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_BNB_NOISE)


def _bnb() -> Any:
    """bitsandbytes, imported on first use (only quantization needs it)."""
    for name in _BNB_NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBnbNoise) for f in logger.filters):
            logger.addFilter(_DropBnbNoise())
    try:
        import bitsandbytes
    except Exception as exc:  # ImportError, or a broken native library raising at import
        raise ModelError(
            f"quantization needs bitsandbytes, which cannot be imported ({exc})"
        ) from None
    return bitsandbytes


_LAYER_CLASSES: dict[str, type] = {}


def layer_classes() -> dict[str, type]:
    """{"nf4": NF4Linear, "int8": Linear8bitFlat}: bitsandbytes subclasses, defined on first use.

    Defined lazily so that importing this module does not import bitsandbytes.
    """
    if not _LAYER_CLASSES:
        nf4, int8 = _define_layer_classes(_bnb())
        for cls in (nf4, int8):
            # Importable as minisam.quantization.<name> (module __getattr__), so pickle finds them.
            cls.__module__, cls.__qualname__ = __name__, cls.__name__
        _LAYER_CLASSES.update(nf4=nf4, int8=int8)
    return _LAYER_CLASSES


def __getattr__(name: str) -> Any:
    """``NF4Linear`` and ``Linear8bitFlat`` on first access (PEP 562), importing bitsandbytes."""
    if name in ("NF4Linear", "Linear8bitFlat"):
        return next(c for c in layer_classes().values() if c.__name__ == name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_layer_classes(bnb: Any) -> tuple[type, type]:
    class NF4Linear(bnb.nn.Linear4bit):
        """``bnb.nn.Linear4bit`` (NF4) whose stored quantized state never changes.

        On an AVX512-BF16 CPU, bnb's own Linear4bit switches itself at its first CPU inference call
        to a repacked weight with bf16 statistics: lossy to undo (the double-quant statistics are
        re-quantized) and without autograd. Here bnb's repacking is off; with ``cpu_fused`` the
        same fused bnb kernel runs on a private repacked copy instead, for CPU inference only
        (eval mode, no gradient wanted). Training and CUDA use bnb's plain path.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.cpu_has_bf16_kernel = bool(self.support_avx512bf16_for_cpu)
            self.support_avx512bf16_for_cpu = False
            self.cpu_fused = False
            self._fused: tuple[int, torch.Tensor, Any] | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            wants_grad = x.requires_grad and torch.is_grad_enabled()
            if self.cpu_fused and x.device.type == "cpu" and not self.training and not wants_grad:
                fused = self._fused_weight()
                if fused is not None:
                    weight, state = fused
                    # The kernel reads rows by stride: hand it a dense input. Computes in bf16.
                    out = bnb.functional.gemv_4bit(x.contiguous(), weight, state=state)
                    if self.bias is not None:
                        out = out + self.bias.to(out.dtype)
                    return out.to(x.dtype)
            return super().forward(x)

        def _fused_weight(self) -> tuple[torch.Tensor, Any] | None:
            """The repacked copy for bnb's fused CPU kernel, built once per weight tensor."""
            source = self.weight.data
            if self._fused is None or self._fused[0] != source.data_ptr():
                try:
                    # Shallow copy: bnb's converter rebinds (and deletes) attributes of the state.
                    state = copy.copy(self.weight.quant_state)
                    packed, state = bnb.functional._convert_weight_packed_for_cpu(source, state)
                except Exception:  # shapes the kernel does not support, another bnb version
                    self.cpu_fused = False
                    return None
                self._fused = (source.data_ptr(), packed, state)
            return self._fused[1], self._fused[2]

        def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            self._fused = None  # moved or cast: rebuild the copy from the new weight on demand
            return super()._apply(fn, *args, **kwargs)

    class Linear8bitFlat(bnb.nn.Linear8bitLt):
        """``bnb.nn.Linear8bitLt`` fed 2D input: bnb 0.50's CPU int8 path fails on 4D input."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            out = super().forward(x.reshape(-1, shape[-1]))
            return out.reshape(*shape[:-1], out.shape[-1])

    return NF4Linear, Linear8bitFlat


class DequantizedLinear(torch.nn.Linear):
    """A frozen fp32 linear computed from quantized weights, keeping those for saving.

    Attributes:
      kind: "nf4" or "int8".
      payload: the quantized tensors as stored in a quantized checkpoint (keys relative to the
        layer: "weight", "weight.absmax", ... for NF4; "weight", "SCB" for INT8).
    """

    def __init__(self, kind: str, payload: dict[str, torch.Tensor], bias: torch.Tensor | None):
        weight = dequantize_payload(kind, payload)
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            self.bias = torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.kind = kind
        self.payload = payload


# ----------------------------------------------------------------------------- building layers


def _frozen(tensor: torch.Tensor, device: torch.device) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor.detach().to(device).clone(), requires_grad=False)


def _build_nf4(linear: torch.nn.Linear, device: torch.device) -> torch.nn.Module:
    """NF4 double-quant layer quantized from ``linear`` on ``device`` (bnb quantizes in ``.to``)."""
    bnb = _bnb()
    layer = layer_classes()["nf4"](
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.detach().float().clone(),
        requires_grad=False,
        compress_statistics=True,
        quant_type="nf4",
        module=layer,
    ).to(device)
    if linear.bias is not None:
        layer.bias = _frozen(linear.bias, device)
    return layer


def _build_int8(linear: torch.nn.Linear, device: torch.device) -> torch.nn.Module:
    """Row-wise absmax INT8 layer quantized from ``linear`` on ``device``."""
    bnb = _bnb()
    layer = layer_classes()["int8"](
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=0.0,
        device="meta",
    )
    layer.weight = bnb.nn.Int8Params(
        linear.weight.detach().float().clone(), requires_grad=False, has_fp16_weights=False
    ).to(device)
    if linear.bias is not None:
        layer.bias = _frozen(linear.bias, device)
    _move_int8_state(layer)
    return layer


def _move_int8_state(layer: torch.nn.Module) -> None:
    """Hand the int8 weight and scales to the layer's matmul state now, not at the first forward.

    ``Linear8bitLt.to`` moves ``layer.state``'s tensors, but a parameter moved by ``Module.to``
    keeps its CB/SCB attributes on the old device: a layer built on CPU and moved to CUDA before
    its first forward would otherwise pick up CPU statistics.
    """
    layer.init_8bit_state()


def _nf4_from_payload(
    payload: dict[str, torch.Tensor], bias: torch.Tensor | None, device: torch.device
) -> torch.nn.Module:
    """An NF4 layer restored from stored tensors, without re-quantizing."""
    bnb = _bnb()
    stats = {k[len("weight.") :]: v for k, v in payload.items() if k.startswith("weight.")}
    state = bnb.functional.QuantState.from_dict(dict(stats), device=device)
    out_features, in_features = (int(n) for n in state.shape)
    layer = layer_classes()["nf4"](
        in_features,
        out_features,
        bias=bias is not None,
        compress_statistics=state.nested,
        quant_type=state.quant_type,
        device="meta",
    )
    layer.weight = bnb.nn.Params4bit.from_prequantized(
        payload["weight"], stats, requires_grad=False, device=device, module=layer
    )
    if bias is not None:
        layer.bias = _frozen(bias, device)
    return layer


def _int8_from_payload(
    payload: dict[str, torch.Tensor], bias: torch.Tensor | None, device: torch.device
) -> torch.nn.Module:
    """An INT8 layer restored from stored int8 weights and row scales (SCB)."""
    bnb = _bnb()
    weight = payload["weight"].to(device)
    layer = layer_classes()["int8"](
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        has_fp16_weights=False,
        threshold=0.0,
        device="meta",
    )
    layer.weight = bnb.nn.Int8Params(
        weight,
        requires_grad=False,
        has_fp16_weights=False,
        CB=weight,
        SCB=payload["SCB"].to(device),
    )
    if bias is not None:
        layer.bias = _frozen(bias, device)
    _move_int8_state(layer)
    return layer


def restore_layer(
    kind: str,
    payload: dict[str, torch.Tensor],
    bias: torch.Tensor | None,
    device: torch.device,
    cpu_strategy: str,
) -> torch.nn.Module:
    """A quantized layer from its stored tensors (see :func:`layer_payload`), ready on ``device``.

    Arguments:
      kind: "nf4" or "int8".
      payload: the layer's stored tensors, keys relative to the layer.
      bias: its fp32 bias, or None.
      device: where it runs; ``cpu_strategy`` applies on CPU only.
      cpu_strategy: one of :data:`CPU_STRATEGIES`.
    """
    if device.type == "cpu" and cpu_strategy == "dequantize":
        return DequantizedLinear(kind, payload, bias)
    build = _nf4_from_payload if kind == "nf4" else _int8_from_payload
    return _apply_cpu_strategy(build(payload, bias, device), kind, device, cpu_strategy)


def dequantize_payload(kind: str, payload: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 (out, in) weight that stored quantized tensors represent (on CPU)."""
    if kind == "int8":
        # bnb's row-wise scheme: w = CB * SCB / 127 (SCB is the row's absmax).
        return payload["weight"].float() * (payload["SCB"].float()[:, None] / 127.0)
    bnb = _bnb()
    stats = {k[len("weight.") :]: v for k, v in payload.items() if k.startswith("weight.")}
    state = bnb.functional.QuantState.from_dict(dict(stats), device=torch.device("cpu"))
    return bnb.functional.dequantize_4bit(payload["weight"].cpu(), state).float().contiguous()


def layer_payload(layer: torch.nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """(kind, stored tensors) of a quantized layer; keys relative to the layer, bias excluded.

    NF4 uses bitsandbytes' own serialisation (``QuantState.as_dict(packed=True)`` under "weight.",
    as ``Linear4bit.state_dict`` does), INT8 the int8 weight and its fp32 row scales "SCB".

    Raises:
      ModelError: not a quantized layer, or one whose state cannot be saved exactly.
    """
    if isinstance(layer, DequantizedLinear):
        return layer.kind, dict(layer.payload)
    bnb = _bnb()
    if isinstance(layer, bnb.nn.Linear4bit):
        state = layer.weight.quant_state
        if state is None or getattr(state, "packing_format_for_cpu", False):
            # A plain bnb Linear4bit repacked itself for its CPU bf16 kernel: statistics are lost.
            raise ModelError(
                "an NF4 layer was repacked by bitsandbytes' CPU bf16 kernel and cannot be saved exactly"
            )
        payload = {"weight": layer.weight.data}
        payload.update({f"weight.{k}": v for k, v in state.as_dict(packed=True).items()})
        return "nf4", payload
    if isinstance(layer, bnb.nn.Linear8bitLt):
        scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
        if layer.weight.dtype != torch.int8 or scb is None:
            raise ModelError("an INT8 layer holds no quantized weights (has_fp16_weights=True?)")
        return "int8", {"weight": layer.weight.data, "SCB": scb}
    raise ModelError(f"{type(layer).__name__} is not a quantized layer")


def _apply_cpu_strategy(
    layer: torch.nn.Module, kind: str, device: torch.device, strategy: str
) -> torch.nn.Module:
    """``layer`` set up for ``strategy`` on CPU (unchanged elsewhere), or its fp32 copy."""
    if device.type != "cpu":
        return layer
    if strategy == "dequantize":
        _, payload = layer_payload(layer)
        copied = {k: v.detach().cpu().clone() for k, v in payload.items()}
        bias = None if layer.bias is None else layer.bias.detach().cpu()
        return DequantizedLinear(kind, copied, bias)
    if kind == "nf4":
        # Where the CPU lacks AVX512-BF16, "bnb-bf16" quietly stays on bnb's fp32 path.
        layer.cpu_fused = strategy == "bnb-bf16" and layer.cpu_has_bf16_kernel
    return layer


def cpu_strategy_of(layer: torch.nn.Module) -> str:
    """The CPU strategy a quantized layer runs with: "dequantize", "bnb-bf16" or "bnb"."""
    if isinstance(layer, DequantizedLinear):
        return "dequantize"
    return "bnb-bf16" if getattr(layer, "cpu_fused", False) else "bnb"


# ----------------------------------------------------------------------------- the encoder


def is_quantized_layer(layer: torch.nn.Module) -> bool:
    """True for the layers this module creates (bnb 4/8-bit, or dequantized copies)."""
    if isinstance(layer, DequantizedLinear):
        return True
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(layer, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def encoder_linears(sam: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    """Full name -> (group, module) of every quantizable encoder linear (quantized or not)."""
    found = {}
    for name, module in sam.image_encoder.named_modules():
        match = _LAYER_NAME.match(name)
        if match:
            found[_ENCODER + name] = (match["group"], module)
    return found


def decoder_linears(sam: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    """Full name -> ("decoder", module) of every mask-decoder linear (quantized or not)."""
    return {
        _DECODER + name: ("decoder", module)
        for name, module in sam.mask_decoder.named_modules()
        if _DECODER_LAYER_NAME.match(name)
    }


def quantizable_linears(sam: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    """Full name -> (group, module) of every linear a scheme can quantize, encoder then decoder."""
    return {**encoder_linears(sam), **decoder_linears(sam)}


def quantized_scheme_of(sam: torch.nn.Module) -> QuantScheme:
    """The scheme actually present in ``sam`` (read off its layers).

    Raises:
      ModelError: a group mixes precisions (not expressible as a scheme).
    """
    kinds: dict[str, set[str]] = {g: set() for g in GROUPS}
    for group, module in quantizable_linears(sam).values():
        kinds[group].add(layer_payload(module)[0] if is_quantized_layer(module) else "fp32")
    mixed = [g for g, ks in kinds.items() if len(ks) > 1]
    if mixed:
        raise ModelError(f"layer group {mixed[0]!r} mixes precisions {sorted(kinds[mixed[0]])}")
    return QuantScheme(tuple((g, ks.pop() if ks else "fp32") for g, ks in kinds.items()))


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _state_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameters, buffers, quantization statistics and kernel copies in ``module``."""
    total = tensor_bytes(module.parameters()) + tensor_bytes(module.buffers())
    for layer in module.modules():
        if is_quantized_layer(layer):
            _, payload = layer_payload(layer)
            # The quantized weight itself is already counted as a parameter (bnb layers).
            extra = [
                v
                for k, v in payload.items()
                if k != "weight" or isinstance(layer, DequantizedLinear)
            ]
            total += tensor_bytes(extra)
            fused = getattr(layer, "_fused", None)
            if fused is not None:  # "bnb-bf16": the repacked copy and its bf16 absmax
                total += tensor_bytes([fused[1], fused[2].absmax])
    return total


def _stored_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s weights as a quantized checkpoint stores them."""
    total = 0
    seen: set[int] = set()
    for layer in module.modules():
        if is_quantized_layer(layer):
            total += tensor_bytes(layer_payload(layer)[1].values())
            if layer.bias is not None:
                total += tensor_bytes([layer.bias])
            seen.update(id(p) for p in layer.parameters())
    others = [p for p in module.parameters() if id(p) not in seen]
    return total + tensor_bytes(others) + tensor_bytes(module.buffers())


def _check_runs(
    layer: torch.nn.Module, in_features: int, out_features: int, device: torch.device
) -> None:
    """Run a small batch of (B, H, W, C) input as the encoder does; raise if it fails or is not finite."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 2, 2, in_features, generator=generator).to(device)
    with torch.inference_mode():
        out = layer(probe)
    if tuple(out.shape) != (1, 2, 2, out_features) or not bool(torch.isfinite(out).all()):
        raise RuntimeError("a test forward gave a wrong shape or non-finite values")


def resolve_cpu_strategy(cpu_strategy: str | dict[str, str] | None) -> dict[str, str]:
    """Kind -> CPU strategy from a single strategy, a partial dict or None (the defaults).

    Raises:
      ModelError: an unknown strategy.
    """
    if cpu_strategy is None:
        chosen = dict(DEFAULT_CPU_STRATEGY)
    elif isinstance(cpu_strategy, str):
        chosen = {kind: cpu_strategy for kind in DEFAULT_CPU_STRATEGY}
    else:
        chosen = {**DEFAULT_CPU_STRATEGY, **cpu_strategy}
    for kind, strategy in chosen.items():
        if strategy not in CPU_STRATEGIES:
            raise ModelError(
                f"unknown cpu_strategy {strategy!r} for {kind}; known: {', '.join(CPU_STRATEGIES)}"
            )
    return chosen


def quantize_encoder(
    sam: torch.nn.Module,
    scheme: str | QuantScheme,
    device: str | torch.device = "cpu",
    cpu_strategy: str | dict[str, str] | None = None,
) -> QuantReport:
    """Replace the selected linears of ``sam`` (encoder groups, decoder) by quantized layers, in place.

    All new layers are built (and test-run on ``device``) before any is swapped in, so on error the
    model is left exactly as it was. The fp32 weights hash is recorded first as
    ``sam.minisam_base_hash`` (unless already set), for adapters and quantized checkpoints.

    Arguments:
      sam: a segment-anything ``Sam`` whose selected linears are plain ``nn.Linear``.
      scheme: a :class:`QuantScheme` or spec string (see :func:`parse_scheme`).
      device: where the quantized layers live (bitsandbytes quantizes on that device); the rest of
        the model is not moved.
      cpu_strategy: "bnb" or "dequantize", or a dict kind -> strategy; None uses
        :data:`DEFAULT_CPU_STRATEGY`. Ignored off CPU.

    Returns:
      a :class:`QuantReport`.

    Raises:
      ModelError: unknown scheme or strategy, layers already quantized or wrapped, or a
        quantization bitsandbytes cannot do on ``device``.
    """
    plan = parse_scheme(scheme)
    strategies = resolve_cpu_strategy(cpu_strategy)
    target = torch.device(device)
    if not isinstance(getattr(sam, "image_encoder", None), torch.nn.Module):
        raise ModelError(f"cannot quantize a {type(sam).__name__}: it has no SAM image_encoder")
    targets = {
        name: (plan.kind_for(group), module)
        for name, (group, module) in quantizable_linears(sam).items()
        if plan.kind_for(group) != "fp32"
    }
    for name, (_, module) in targets.items():
        if type(module) is not torch.nn.Linear:
            state = (
                "already quantized" if is_quantized_layer(module) else f"a {type(module).__name__}"
            )
            raise ModelError(
                f"cannot quantize {name}: it is {state}, not a plain nn.Linear "
                "(quantize the fp32 model, before adding adapters)"
            )
    # The fp32 hash must be taken before any layer changes; it is recorded only on success so
    # that a failed call leaves the model exactly as it was.
    base_hash = getattr(sam, "minisam_base_hash", None) or weights_hash(sam)
    parts = [sam.image_encoder] + ([sam.mask_decoder] if "decoder" in plan.groups else [])
    bytes_before = sum(_state_bytes(part) for part in parts)
    built = {
        name: _build_layer(name, kind, module, target, strategies)
        for name, (kind, module) in targets.items()
    }
    for name, layer in built.items():
        parent, _, leaf = name.rpartition(".")
        setattr(sam.get_submodule(parent), leaf, layer)
    sam.minisam_base_hash = base_hash
    return QuantReport(
        scheme=str(quantized_scheme_of(sam)),
        layers={name: kind for name, (kind, _) in targets.items()},
        bytes_before=bytes_before,
        bytes_after=sum(_state_bytes(part) for part in parts),
        stored_bytes=sum(_stored_bytes(part) for part in parts),
        cpu_strategy=(
            {targets[name][0]: cpu_strategy_of(layer) for name, layer in built.items()}
            if target.type == "cpu"
            else {}
        ),
    )


def _build_layer(
    name: str, kind: str, linear: torch.nn.Linear, device: torch.device, strategies: dict[str, str]
) -> torch.nn.Module:
    """One quantized replacement for ``linear``; any failure becomes a one-line ModelError."""
    try:
        layer = _build_nf4(linear, device) if kind == "nf4" else _build_int8(linear, device)
        layer = _apply_cpu_strategy(layer, kind, device, strategies[kind])
        layer.train(linear.training)
        _check_runs(layer, linear.in_features, linear.out_features, device)
    except ModelError:
        raise
    except Exception as exc:  # bnb raises RuntimeError, ValueError, AssertionError, ... per backend
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot quantize {name} to {kind} on {device}: {reason}") from None
    return layer


def quantize_model(
    model: LoadedModel,
    scheme: str | QuantScheme,
    device: str | torch.device = "cpu",
    cpu_strategy: str | dict[str, str] | None = None,
) -> QuantReport:
    """:func:`quantize_encoder` for a :class:`LoadedModel`, keeping its fp32 ``base_hash()``.

    The base hash is computed (or taken from the model) before any layer changes, so adapters
    trained on the fp32 model still match and quantized checkpoints record it.
    """
    if not hasattr(model.sam, "minisam_base_hash"):
        model.sam.minisam_base_hash = model.base_hash()
    return quantize_encoder(model.sam, scheme, device=device, cpu_strategy=cpu_strategy)
