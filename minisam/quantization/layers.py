"""bitsandbytes' NF4 and INT8 linears as MiniSAM uses them, and their CPU strategies.

* NF4: ``bnb.nn.Linear4bit(quant_type="nf4", compress_statistics=True)``: 4-bit NormalFloat codes,
  one absmax per 64 weights, absmax itself 8-bit quantized (double quant).
* INT8: ``bnb.nn.Linear8bitLt(has_fp16_weights=False, threshold=0)``: per-output-row absmax int8
  (LLM.int8() without outlier decomposition). bitsandbytes 0.50.2's CPU int8 works only for 2D input
  (its ``int8_vectorwise_quant`` takes the row maximum over dim 1), so :class:`Linear8bitFlat`
  flattens to 2D around bnb's forward (harmless on CUDA). torch's own ``quantize_dynamic`` was not
  used: torch 2.13 marks ``torch.ao.quantization`` deprecated for removal.

``cpu_strategy`` chooses what runs on CPU; the stored format stays quantized either way:

* "bnb-bf16": bnb's fused kernel on a private repacked copy (built at the first eval forward;
  memory ~2x the 4-bit weights); falls back to "bnb" on CPUs without AVX512-BF16, in training
  mode and when gradients are needed (the fused kernel has no autograd). NF4 only; INT8 "bnb".
* "bnb": bitsandbytes' generic layers (for INT8, activations cast to fp16 and quantized per row to
  int8, then an int8 matmul); for NF4 on CPU, the weight decoded by :func:`dequantize_nf4` (bnb
  0.50.2's own CPU decoding is wrong for rows that are not whole 64-blocks) and an fp32 matmul.
* "dequantize": fp32 ``nn.Linear`` copies made once from the quantized weights (fp32 speed and
  memory, plus the kept quantized tensors for saving).

Defaults (``DEFAULT_CPU_STRATEGY``) are the fastest measured (docs/bench/quant_kernels.md): NF4
"bnb-bf16", INT8 "bnb". bnb's own Linear4bit would also pick the fused kernel, but by repacking its
weight in place on the first CPU call, which loses the double-quant statistics (lossy to undo) and
autograd; MiniSAM's layers never do that. On CUDA the plain bitsandbytes path is used.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch

from minisam.errors import ModelError
from minisam.library_noise import quiet_library_noise

CPU_STRATEGIES: tuple[str, ...] = ("bnb-bf16", "bnb", "dequantize")
# Fastest measured on CPU per kind (docs/bench/quant_kernels.md); INT8 has no bf16 kernel.
DEFAULT_CPU_STRATEGY: dict[str, str] = {"nf4": "bnb-bf16", "int8": "bnb"}


def _bnb() -> Any:
    """bitsandbytes, imported on first use (only quantization needs it)."""
    quiet_library_noise()
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
            if x.device.type == "cpu":  # bnb's CPU dequantization is wrong for some shapes
                weight = dequantize_nf4(self.weight.data, self.weight.quant_state)
                bias = None if self.bias is None else self.bias.to(x.dtype)
                return torch.nn.functional.linear(x, weight.to(x.dtype), bias)
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


def _frozen(tensor: torch.Tensor, device: torch.device) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor.detach().to(device).clone(), requires_grad=False)


def build_nf4(linear: torch.nn.Linear, device: torch.device) -> torch.nn.Module:
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


def build_int8(linear: torch.nn.Linear, device: torch.device) -> torch.nn.Module:
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
    return apply_cpu_strategy(build(payload, bias, device), kind, device, cpu_strategy)


def dequantize_payload(kind: str, payload: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 (out, in) weight that stored quantized tensors represent (on CPU)."""
    if kind == "int8":
        # bnb's row-wise scheme: w = CB * SCB / 127 (SCB is the row's absmax).
        return payload["weight"].float() * (payload["SCB"].float()[:, None] / 127.0)
    bnb = _bnb()
    stats = {k[len("weight.") :]: v for k, v in payload.items() if k.startswith("weight.")}
    state = bnb.functional.QuantState.from_dict(dict(stats), device=torch.device("cpu"))
    return dequantize_nf4(payload["weight"].cpu(), state).contiguous()


def dequantize_nf4(codes: torch.Tensor, state: Any) -> torch.Tensor:
    """The fp32 weight of NF4 ``codes`` with their bitsandbytes ``QuantState``.

    On CPU, bitsandbytes 0.50.2's ``dequantize_4bit`` decodes a 2D weight row by row and gets rows
    whose length is not a multiple of the block size (64) wrong: TinyViT's 160-wide layers came back
    with 24 % relative error instead of NF4's 9 % (its quantization is right). Decoding the codes as
    one flat run of blocks, which is how they were quantized, and reshaping gives the NF4 weight
    (checked against a pure-torch NF4 codebook in Testing/core/test_quantization.py).
    """
    bnb = _bnb()
    if codes.device.type != "cpu":
        return bnb.functional.dequantize_4bit(codes, state).float()
    flat = copy.copy(state)  # shallow: only the shape differs
    flat.shape = torch.Size([state.shape.numel()])
    return bnb.functional.dequantize_4bit(codes, flat).float().reshape(state.shape)


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


def apply_cpu_strategy(
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


def is_quantized_layer(layer: torch.nn.Module) -> bool:
    """True for the layers this module creates (bnb 4/8-bit, or dequantized copies)."""
    if isinstance(layer, DequantizedLinear):
        return True
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(layer, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


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
