"""An adapter folder checked on its own (files, JSON, peft config, tensors, ranks) and against a model.

Everything here runs before a model is touched, so a bad folder never leaves a model half adapted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError
from safetensors.torch import load_file

from minisam.adapters.lora import base_layers, check_can_add, check_name_fits, describe
from minisam.adapters.metadata import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterMetadata,
    check_folder,
    read_json_object,
    read_metadata,
)
from minisam.errors import ModelError

__all__ = ["AdapterContents", "check_fits", "read_adapter"]

_PEFT_PREFIX = "base_model.model."
_SUPPORTED_TYPES = ("LORA", "ADALORA")
# Tensor names per adapted layer, after the layer's path.
_LAYER_TENSORS = {
    "LORA": ("lora_A.weight", "lora_B.weight"),
    "ADALORA": ("lora_A", "lora_B", "lora_E"),
}


@dataclass
class AdapterContents:
    """An adapter folder read and checked on its own (no model involved yet)."""

    folder: Path
    metadata: AdapterMetadata
    config: PeftConfig
    tensors: dict[
        str, torch.Tensor
    ]  # peft's checkpoint keys (base_model.model.<layer>.lora_A.weight)
    layers: dict[str, tuple[int, int, int]]  # layer path -> (in_features, out_features, rank)

    @property
    def method(self) -> str:
        return str(self.config.peft_type.value)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def read_adapter(folder: str | os.PathLike[str]) -> AdapterContents:
    """Read an adapter folder and check it on its own: files, JSON, tensors, ranks against the config."""
    folder = check_folder(Path(folder))
    metadata = read_metadata(folder)
    label = f"adapter {metadata.name!r} ({folder})"
    config = _read_peft_config(folder, label)
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{label}: {WEIGHTS_FILE} is truncated or corrupt ({reason})") from None
    layers = _layers_of(tensors, config, label)
    return AdapterContents(folder, metadata, config, tensors, layers)


def _read_peft_config(folder: Path, label: str) -> PeftConfig:
    data = read_json_object(folder / CONFIG_FILE)
    peft_type = data.get("peft_type")
    if peft_type not in _SUPPORTED_TYPES:
        raise ModelError(
            f"{label}: peft type {peft_type!r} is not supported (LoRA and AdaLoRA are)"
        )
    try:
        # peft's own reader (forward-compatible with newer keys); the file exists, so no hub access.
        config = PeftConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{label}: invalid {CONFIG_FILE} ({reason})") from None
    unsupported = [
        what
        for what, present in (
            ("DoRA", getattr(config, "use_dora", False)),
            ("LoRA bias", getattr(config, "lora_bias", False)),
            (
                f"bias={getattr(config, 'bias', 'none')!r}",
                getattr(config, "bias", "none") != "none",
            ),
            ("modules_to_save", getattr(config, "modules_to_save", None)),
            ("target_parameters", getattr(config, "target_parameters", None)),
            ("trainable_token_indices", getattr(config, "trainable_token_indices", None)),
            ("layer_replication", getattr(config, "layer_replication", None)),
        )
        if present
    ]
    if unsupported:
        raise ModelError(f"{label}: unsupported peft options {', '.join(unsupported)}")
    if not config.target_modules:
        raise ModelError(f"{label}: {CONFIG_FILE} names no target_modules")
    return config


def _expected_rank(config: PeftConfig, layer: str) -> int:
    if config.peft_type.value == "ADALORA":
        for key, mask in (config.rank_pattern or {}).items():
            # peft saves keys as "<layer>.lora_E" (in memory "<layer>.lora_E.<adapter>").
            if key.split(".lora_E")[0] == layer:
                return int(sum(bool(m) for m in mask))
        return int(config.init_r)
    pattern = config.rank_pattern or {}
    return int(pattern.get(get_pattern_key(pattern.keys(), layer), config.r))


def _layers_of(
    tensors: dict[str, torch.Tensor], config: PeftConfig, label: str
) -> dict[str, tuple[int, int, int]]:
    """Group tensors by layer and check each group is complete, finite and of the configured rank."""
    suffixes = _LAYER_TENSORS[config.peft_type.value]
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        suffix = next((s for s in suffixes if key.endswith("." + s)), None)
        if not key.startswith(_PEFT_PREFIX) or suffix is None:
            raise ModelError(
                f"{label}: unexpected tensor {key} for a {config.peft_type.value} adapter"
            )
        if not tensor.is_floating_point() or tensor.dim() != 2:
            raise ModelError(f"{label}: tensor {key} is not a 2-D float tensor")
        if not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{label}: tensor {key} holds NaN or infinite values")
        layer = key[len(_PEFT_PREFIX) : -len(suffix) - 1]
        groups.setdefault(layer, {})[suffix] = tensor
    if not groups:
        raise ModelError(f"{label}: {WEIGHTS_FILE} holds no adapter tensors")
    layers = {}
    for layer, group in sorted(groups.items()):
        lacking = [s for s in suffixes if s not in group]
        if lacking:
            raise ModelError(f"{label}: layer {layer} lacks {', '.join(lacking)}")
        a, b = group[suffixes[0]], group[suffixes[1]]
        rank, in_features = a.shape
        out_features = b.shape[0]
        expected = _expected_rank(config, layer)
        shapes_agree = b.shape[1] == rank and (
            len(suffixes) == 2 or tuple(group["lora_E"].shape) == (rank, 1)
        )
        if not shapes_agree or rank != expected:
            raise ModelError(
                f"{label}: layer {layer} has tensors of rank {rank} (A {tuple(a.shape)}, B {tuple(b.shape)}) "
                f"but {CONFIG_FILE} says rank {expected} (rank mismatch)"
            )
        layers[layer] = (int(in_features), int(out_features), int(rank))
    return layers


def check_fits(
    contents: AdapterContents, model: torch.nn.Module, expected_base_hash: str, name: str
) -> None:
    """Raise a one-line ModelError unless the adapter can be applied to ``model`` exactly as stored."""
    meta = contents.metadata
    if meta.base_hash != expected_base_hash:
        raise ModelError(
            f"adapter {meta.name} was trained for base {meta.base_hash}, "
            f"the loaded model is {expected_base_hash}"
        )
    config = contents.config
    check_can_add(model, name, config, f"adapter {meta.name} ({config.peft_type.value})")
    check_name_fits(model, name)
    modules = base_layers(model)
    targeted = {}
    for path, module in modules.items():
        if check_target_module_exists(config, path):
            if not isinstance(module, torch.nn.Linear):
                raise ModelError(
                    f"adapter {meta.name} targets {path}, a {type(module).__name__}, not a linear layer"
                )
            targeted[path] = module
    stored = contents.layers
    foreign = sorted(set(stored) - set(targeted))
    if foreign:
        raise ModelError(
            f"adapter {meta.name} has weights for layers the model lacks or its config does not target: "
            f"{describe(foreign)} (target mismatch)"
        )
    lacking = sorted(set(targeted) - set(stored))
    if lacking:
        raise ModelError(
            f"adapter {meta.name} lacks weights for targeted layers {describe(lacking)} (target mismatch)"
        )
    for path, module in targeted.items():
        in_features, out_features, rank = stored[path]
        if (module.in_features, module.out_features) != (in_features, out_features):
            raise ModelError(
                f"adapter {meta.name} does not fit layer {path}: it maps {module.in_features} -> "
                f"{module.out_features} features, the adapter's rank-{rank} tensors {in_features} -> "
                f"{out_features} (rank or target mismatch)"
            )
