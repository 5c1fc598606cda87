"""Quantized checkpoints: a SAM whose encoder (and decoder) hold NF4 / INT8 layers, saved as quantized.

One ``.safetensors`` file stores the quantized tensors themselves, so loading never re-quantizes
from fp32 and a loaded model computes exactly what the saved one did:

* NF4 layer ``<name>``: ``<name>.weight`` (packed uint8, two 4-bit codes a byte) and bitsandbytes'
  own serialisation of its ``QuantState`` under ``<name>.weight.`` (``absmax`` uint8 + ``nested_*``
  double-quant statistics + ``quant_map`` + the packed ``quant_state.bitsandbytes__nf4`` blob),
  i.e. the keys ``bnb.nn.Linear4bit.state_dict()`` writes;
* INT8 layer: ``<name>.weight`` (int8) and ``<name>.SCB`` (fp32 absmax of each output row);
* every other tensor (biases, norms, convolutions, prompt encoder, the mask decoder unless its
  group is quantized) in fp32 as in :mod:`minisam.checkpoints`, or in fp16/bf16 with
  ``rest_dtype``.

Metadata: ``format`` ("minisam.sam-quantized/1"), ``config`` (the :class:`SamConfig` JSON),
``scheme`` (e.g. "nf4:attn,mlp"), ``layers`` (JSON name -> kind), ``card`` (JSON), ``base_hash``
(:func:`minisam.checkpoints.weights_hash` of the fp32 model before quantizing: adapters trained on
that base keep matching) and ``tensors_sha256`` (a digest of all stored tensors, so a corrupted
file is refused instead of giving silently wrong masks).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minisam.atomic import atomic_output
from minisam.checkpoints import LoadedModel, check_state_fits, read_safetensors_metadata
from minisam.errors import ModelError, OutputError
from minisam.model_config import SamConfig, build_sam
from minisam.quantization import (
    DequantizedLinear,
    QuantScheme,
    dequantize_payload,
    is_quantized_layer,
    layer_payload,
    parse_scheme,
    quantizable_linears,
    quantized_scheme_of,
    resolve_cpu_strategy,
    restore_layer,
)

FORMAT = "minisam.sam-quantized/1"
_HASH = re.compile(r"^[0-9a-f]{16}$")
# The stored tensors each kind of layer needs (besides an optional bias).
_REQUIRED = {
    "nf4": {"weight", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4"},
    "int8": {"weight", "SCB"},
}


def is_quantized_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a readable safetensors file in this module's format (header only)."""
    try:
        return read_safetensors_metadata(path).get("format") == FORMAT
    except ModelError:
        return False


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over names, shapes, dtypes and bytes of ``tensors``, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        data = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}:{tuple(data.shape)}:{data.dtype};".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- saving


def save_quantized_checkpoint(
    sam: torch.nn.Module,
    config: SamConfig,
    path: str | Path,
    card: dict[str, Any] | None = None,
    base_hash: str | None = None,
    rest_dtype: str = "float32",
) -> Path:
    """Write a quantized model atomically, keeping the quantized weights as they are.

    Arguments:
      sam: a ``Sam`` quantized by :func:`minisam.quantization.quantize_encoder` (or loaded by
        :func:`load_quantized_checkpoint`); no adapters attached.
      config: its architecture.
      path: the ``.safetensors`` file to write.
      card: optional model card (JSON-serialisable).
      base_hash: the fp32 base's weights hash; defaults to the one recorded when quantizing
        (``sam.minisam_base_hash``). Both given and different is an error.
      rest_dtype: storage type of the tensors that are not quantized (prompt encoder, mask decoder,
        norms, position embeddings): "float32" (exact) or "float16"/"bfloat16" (half the size; they
        are cast back to float32 when loading). With a small encoder the decoder dominates the
        file unless its group ("decoder", or scheme "nf4:all") is quantized too.

    Returns:
      ``path``.

    Raises:
      ModelError: nothing quantized, no base hash known, or a model that does not fit ``config``.
      OutputError: ``path`` cannot be written.
    """
    path = Path(path)
    base = _resolve_base_hash(sam, base_hash)
    scheme = quantized_scheme_of(sam)
    if scheme.kind == "fp32":
        raise ModelError(
            "the model has no quantized layers; save it with minisam.checkpoints.save_checkpoint"
        )
    if rest_dtype not in _REST_DTYPES:
        raise ModelError(f"rest_dtype {rest_dtype!r} must be one of {', '.join(_REST_DTYPES)}")
    tensors, layers = _quantized_state(sam)
    _check_fits(tensors, layers, config)
    tensors = _cast_rest(tensors, layers, _REST_DTYPES[rest_dtype])
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config.to_dict()),
        "scheme": str(scheme),
        "layers": json.dumps(layers, sort_keys=True),
        "card": json.dumps(card or {}),
        "base_hash": base,
        "tensors_sha256": tensors_digest(tensors),
        "rest_dtype": rest_dtype,
    }
    try:
        with atomic_output(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except OSError as exc:  # missing folder, no permission, disk full
        raise OutputError(
            f"cannot write quantized checkpoint {path} ({exc.strerror or exc})"
        ) from None
    return path


_REST_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _cast_rest(
    tensors: dict[str, torch.Tensor], layers: dict[str, str], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Cast the float32 tensors outside the quantized layers to ``dtype`` (quantized payloads untouched)."""
    if dtype == torch.float32:
        return tensors
    return {
        key: value.to(dtype)
        if value.dtype == torch.float32 and not any(key.startswith(n + ".") for n in layers)
        else value
        for key, value in tensors.items()
    }


def _resolve_base_hash(sam: torch.nn.Module, given: str | None) -> str:
    recorded = getattr(sam, "minisam_base_hash", None)
    if given is not None and recorded is not None and given != recorded:
        raise ModelError(
            f"base_hash {given} differs from {recorded}, the fp32 hash recorded when the model was "
            "quantized (was LoadedModel.base_hash() first called after quantizing?)"
        )
    base = given or recorded
    if base is None or not _HASH.match(base):
        raise ModelError(
            "the fp32 base hash of this model is unknown: quantize it with "
            "minisam.quantization.quantize_encoder/quantize_model, or pass base_hash"
        )
    return base


def _quantized_state(sam: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, name -> kind of the quantized layers)."""
    quantized = {
        name: module
        for name, (_, module) in quantizable_linears(sam).items()
        if is_quantized_layer(module)
    }
    tensors: dict[str, torch.Tensor] = {}
    for key, value in sam.state_dict().items():
        if not any(key.startswith(name + ".") for name in quantized):
            tensors[key] = value.detach().to("cpu").contiguous()
    layers: dict[str, str] = {}
    for name, module in quantized.items():
        kind, payload = layer_payload(module)
        _check_unchanged(name, module, kind, payload)
        layers[name] = kind
        for key, value in payload.items():
            # Cloned: quantization statistics may share storage, which safetensors refuses.
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
        if module.bias is not None:
            tensors[f"{name}.bias"] = module.bias.detach().to("cpu").float().contiguous()
    return tensors, layers


def _check_unchanged(name: str, module: torch.nn.Module, kind: str, payload: dict) -> None:
    """A dequantized layer must still hold what its payload encodes (no merged adapter, no edits)."""
    if isinstance(module, DequantizedLinear):
        expected = dequantize_payload(kind, payload)
        if not torch.equal(module.weight.detach().cpu(), expected):
            raise ModelError(
                f"{name} was changed after quantization (merged adapter?): its quantized "
                "weights no longer describe it; re-quantize the fp32 model"
            )


def _expected_keys(config: SamConfig) -> set[str]:
    """The fp32 state-dict keys of ``config``'s architecture (built on the meta device: no memory)."""
    with torch.device("meta"):
        return set(build_sam(config).state_dict())


def _check_fits(
    tensors: dict[str, torch.Tensor], layers: dict[str, str], config: SamConfig
) -> None:
    expected = {k for k in _expected_keys(config) if not any(k.startswith(n + ".") for n in layers)}
    plain = {k for k in tensors if not any(k.startswith(n + ".") for n in layers)}
    extra = sorted(plain - expected)
    missing = sorted(expected - plain)
    if extra or missing:
        example = (extra or missing)[0]
        raise ModelError(
            f"the model does not fit its config ({len(missing)} missing, {len(extra)} unexpected "
            f"tensors, e.g. {example}); detach adapters before saving a quantized checkpoint"
        )


# ----------------------------------------------------------------------------- loading


def load_quantized_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    cpu_strategy: str | dict[str, str] | None = None,
) -> LoadedModel:
    """Rebuild a model saved by :func:`save_quantized_checkpoint`, restoring its quantized layers.

    Arguments:
      path: the ``.safetensors`` file.
      device: where the model is put; quantized layers are restored directly there.
      cpu_strategy: "bnb-bf16", "bnb" or "dequantize" (or a dict kind -> strategy) on CPU; None
        uses :data:`minisam.quantization.DEFAULT_CPU_STRATEGY` (see that module for timings).

    Returns:
      a :class:`LoadedModel` whose ``base_hash()`` is the stored fp32 base hash.

    Raises:
      ModelError: a file that is missing, truncated, corrupt or of another format (one line).
    """
    path = Path(path)
    target = torch.device(device)
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != FORMAT:
        raise ModelError(
            f"checkpoint {path} is not a quantized MiniSAM checkpoint (format {FORMAT})"
        )
    config, card, scheme, layers, base = _parse_metadata(path, metadata)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    if tensors_digest(state) != metadata.get("tensors_sha256"):
        raise ModelError(f"checkpoint {path} is corrupt: its tensors do not match their checksum")
    strategies = resolve_cpu_strategy(cpu_strategy)
    sam = build_sam(config)
    _check_layers(path, sam, scheme, layers)
    built = {
        name: _restore_layer(path, name, kind, _take(state, name), target, strategies)
        for name, kind in layers.items()
    }
    _load_plain(path, sam, state, layers)
    for name, layer in built.items():
        parent, _, leaf = name.rpartition(".")
        setattr(sam.get_submodule(parent), leaf, layer)
    sam.minisam_base_hash = base
    sam = sam.to(target).eval()
    return LoadedModel(
        sam=sam, config=config, name=card.get("name", path.stem), source=path, card=card, _hash=base
    )


def _parse_metadata(
    path: Path, metadata: dict[str, str]
) -> tuple[SamConfig, dict[str, Any], QuantScheme, dict[str, str], str]:
    try:
        config = SamConfig.from_dict(json.loads(metadata["config"]))
        card = json.loads(metadata.get("card", "{}"))
        layers = json.loads(metadata["layers"])
        scheme = parse_scheme(metadata["scheme"])
        base = metadata["base_hash"]
    except (KeyError, ValueError, TypeError, ModelError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ModelError(
            f"checkpoint {path} has invalid quantization metadata ({reason})"
        ) from None
    if not isinstance(card, dict) or not isinstance(layers, dict) or not _HASH.match(base):
        raise ModelError(f"checkpoint {path} has invalid quantization metadata")
    return config, card, scheme, layers, base


def _check_layers(
    path: Path, sam: torch.nn.Module, scheme: QuantScheme, layers: dict[str, str]
) -> None:
    """The stored layer list must be exactly what the scheme selects in this architecture."""
    wanted = {
        name: scheme.kind_for(group)
        for name, (group, _) in quantizable_linears(sam).items()
        if scheme.kind_for(group) != "fp32"
    }
    if wanted != layers:
        raise ModelError(
            f"checkpoint {path} is inconsistent: its layer list does not match scheme {scheme}"
        )


def _take(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Remove and return the tensors of layer ``name`` (keys relative to it)."""
    prefix = name + "."
    keys = [k for k in state if k.startswith(prefix)]
    return {k[len(prefix) :]: state.pop(k) for k in keys}


def _restore_layer(
    path: Path,
    name: str,
    kind: str,
    tensors: dict[str, torch.Tensor],
    device: torch.device,
    strategies: dict[str, str],
) -> torch.nn.Module:
    bias = tensors.pop("bias", None)
    missing = sorted(_REQUIRED[kind] - set(tensors))
    if missing:
        raise ModelError(f"checkpoint {path}: quantized layer {name} lacks {missing[0]}")
    try:
        return restore_layer(kind, tensors, bias, device, strategies[kind]).eval()
    except ModelError:
        raise
    except Exception as exc:  # bnb: ValueError / AssertionError / RuntimeError on bad statistics
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"checkpoint {path}: quantized layer {name} is corrupt ({reason})"
        ) from None


def _load_plain(
    path: Path, sam: torch.nn.Module, state: dict[str, torch.Tensor], layers: dict[str, str]
) -> None:
    """Load the fp32 tensors; every non-quantized tensor of the architecture must be present."""
    expected = {
        k: v for k, v in sam.state_dict().items() if not any(k.startswith(n + ".") for n in layers)
    }
    check_state_fits(expected, state, path, "its config")
    sam.load_state_dict(state, strict=False)
