"""Post-training weight quantization of a SAM's frozen linears with bitsandbytes (NF4, INT8).

The linears of a scheme's groups (:mod:`minisam.quantization.scheme`) are replaced in place by
bitsandbytes layers (:mod:`minisam.quantization.layers`). Convolutions (patch embedding, TinyViT's
MBConv stages, encoder neck, mask upscaling), norms, position embeddings and the prompt encoder stay
fp32. With a small encoder the mask decoder holds most of the weights: quantizing only the encoder
leaves the file far above a quarter of fp32 (see docs/bench/cpu.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from minisam.checkpoints import LoadedModel, weights_hash
from minisam.encoders import encoder_family, family_module
from minisam.errors import ModelError
from minisam.quantization.layers import (
    DequantizedLinear,
    apply_cpu_strategy,
    build_int8,
    build_nf4,
    cpu_strategy_of,
    is_quantized_layer,
    layer_payload,
    resolve_cpu_strategy,
)
from minisam.quantization.scheme import GROUPS, QuantScheme, parse_scheme

_ENCODER = "image_encoder."
# Mask-decoder-relative names of its linears (segment-anything's MaskDecoder / TwoWayTransformer).
_DECODER_LAYER_NAME = re.compile(
    r"^(transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
    r"|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|out_proj)"
    r"|transformer\.layers\.\d+\.mlp\.lin[12]"
    r"|(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.\d+)$"
)
_DECODER = "mask_decoder."


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


def encoder_linears(sam: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    """Full name -> (group, module) of every quantizable encoder linear (quantized or not).

    Which layers these are is the encoder family's knowledge (its ``QUANTIZABLE_LINEAR``).
    """
    pattern = family_module(encoder_family(sam)).QUANTIZABLE_LINEAR
    found = {}
    for name, module in sam.image_encoder.named_modules():
        match = pattern.match(name)
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


def quantize_encoder(
    sam: torch.nn.Module,
    scheme: str | QuantScheme,
    device: str | torch.device = "cpu",
    cpu_strategy: str | dict[str, str] | None = None,
) -> QuantReport:
    """Replace the linears of the scheme's groups by quantized layers, in place.

    Despite its name (kept for callers) it quantizes the mask decoder too when the scheme names the
    "decoder" group.

    All new layers are built (and test-run on ``device``) before any is swapped in, so on error the
    model is left exactly as it was. The fp32 weights hash is recorded first as
    ``sam.minisam_base_hash`` (unless already set), for adapters and quantized checkpoints.

    Arguments:
      sam: a segment-anything ``Sam`` whose selected linears are plain ``nn.Linear``.
      scheme: a :class:`QuantScheme` or spec string (see :func:`parse_scheme`).
      device: where the quantized layers live (bitsandbytes quantizes on that device); the rest of
        the model is not moved.
      cpu_strategy: one of :data:`~minisam.quantization.layers.CPU_STRATEGIES` ("bnb-bf16", "bnb",
        "dequantize") for every kind, or a dict kind -> strategy; None uses
        :data:`~minisam.quantization.layers.DEFAULT_CPU_STRATEGY`. Ignored off CPU.

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
    candidates = quantizable_linears(sam)
    empty = sorted(set(plan.groups) - {group for group, _ in candidates.values()})
    if empty:
        raise ModelError(
            f"quantization scheme {plan} names layer group(s) {', '.join(empty)} that match no layer "
            f"of this {encoder_family(sam)} model"
        )
    targets = {
        name: (plan.kind_for(group), module)
        for name, (group, module) in candidates.items()
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
        layer = build_nf4(linear, device) if kind == "nf4" else build_int8(linear, device)
        layer = apply_cpu_strategy(layer, kind, device, strategies[kind])
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
    device: str | torch.device | None = None,
    cpu_strategy: str | dict[str, str] | None = None,
) -> QuantReport:
    """:func:`quantize_encoder` for a :class:`LoadedModel`, keeping its fp32 ``base_hash()``;
    ``device`` defaults to where the model's weights are (a model moved to a GPU quantizes there).

    The base hash is computed (or taken from the model) before any layer changes, so adapters
    trained on the fp32 model still match and quantized checkpoints record it.
    """
    if not hasattr(model.sam, "minisam_base_hash"):
        model.sam.minisam_base_hash = model.base_hash()
    if device is None:
        device = next(model.sam.parameters()).device
    return quantize_encoder(model.sam, scheme, device=device, cpu_strategy=cpu_strategy)
