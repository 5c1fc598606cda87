"""The README.md model card of an adapter folder, generated from its ``minisam_adapter.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from minisam.adapters.metadata import METADATA_FILE, README_FILE, AdapterMetadata, read_metadata
from minisam.atomic import atomic_output
from minisam.errors import OutputError
from minisam.modality import describe_family, family_for_dicom

__all__ = ["model_card", "write_model_card"]

# Listed first, in this order, under "Training data".
_DATA_KEYS = ("dataset", "source", "licence", "license")
_LONG_LIST = 8  # longer lists are summarised by their length


def model_card(metadata: AdapterMetadata) -> str:
    """The adapter folder's README.md: a short model card written from ``minisam_adapter.json``."""
    meta = metadata
    spec = meta.spec or {}
    method = str(spec.get("method", "lora")).lower()
    family = family_for_dicom(meta.modality) or meta.modality
    base_name = f"`{meta.base_model}`" if meta.base_model else ""
    described = describe_family(family)
    modality = family if described == family else f"{family} ({described})"
    lines = [
        "---",
        "library_name: peft",
        "tags:",
        f"- {method}",
        "- minisam",
        "- segment-anything",
        "- medical-imaging",
        "---",
        "",
        f"# {meta.name}: MiniSAM {_METHOD_NAMES.get(method, method)} adapter for {described}",
        "",
        f"A per-modality adapter for MiniSAM (Segment Anything for medical images) on "
        f"{'base model ' + base_name if base_name else 'its base model'}. The "
        "folder is peft's format (`adapter_config.json`, `adapter_model.safetensors`) plus "
        "`minisam_adapter.json`, the metadata this card is generated from.",
        "",
        "## Details",
        "",
        f"- Name: `{meta.name}`",
        f"- Modality: {modality}",
        f"- Base model: {base_name or 'unnamed'}, weights hash `{meta.base_hash}`; MiniSAM refuses the adapter on "
        "any other base",
        f"- Method: {_method_line(method, spec)}",
    ]
    targets = _targets_line(spec)
    if targets:
        lines.append(f"- Adapted layers: {targets}")
    if meta.trainable_params:
        lines.append(f"- Trainable parameters: {meta.trainable_params:,}")
    if meta.created:
        lines.append(f"- Created: {meta.created}")
    data = dict(meta.training_data or {})
    if data:
        lines += ["", "## Training data", ""]
        ordered = [k for k in _DATA_KEYS if k in data] + [k for k in data if k not in _DATA_KEYS]
        lines += [f"- {_label(key)}: {_value(data[key])}" for key in ordered]
    metrics = dict(meta.metrics or {})
    if metrics:
        lines += ["", "## Metrics", ""]
        lines += _metric_lines(metrics)
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"minisam segment IMAGE --adapter {meta.name}  # by name: installed or built in",
        f"minisam segment IMAGE --adapter auto  # picked for {family} images by DICOM modality",
        "minisam segment IMAGE --adapter path/to/this/folder",
        "minisam adapters install path/to/this/folder",
        "```",
        "",
        "Without MiniSAM, `peft.PeftModel.from_pretrained(sam, folder)` loads it onto the base SAM.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike[str]) -> Path:
    """(Re)write the README.md of an existing adapter folder from its metadata; its path."""
    folder = Path(folder)
    meta = read_metadata(folder)
    target = folder / README_FILE
    try:
        with atomic_output(target) as tmp:
            tmp.write_text(model_card(meta), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {target} ({exc})") from None
    return target


_METHOD_NAMES = {"lora": "LoRA", "adalora": "AdaLoRA"}


def _method_line(method: str, spec: dict[str, Any]) -> str:
    parts = [_METHOD_NAMES.get(method, method)]
    if method == "adalora":
        if spec.get("init_r") is not None:
            parts.append(f"rank {spec['init_r']} -> {spec.get('target_r')} (initial -> target)")
    elif spec.get("rank") is not None:
        parts.append(f"rank {spec['rank']}")
    if spec.get("alpha") is not None:
        parts.append(f"alpha {_value(spec['alpha'])}")
    if spec.get("dropout"):
        parts.append(f"dropout {_value(spec['dropout'])}")
    return ", ".join(parts)


def _targets_line(spec: dict[str, Any]) -> str:
    encoder = spec.get("target_modules")
    if encoder:
        text = f"image encoder blocks {', '.join(f'`{t}`' for t in encoder)}"
        if spec.get("include_decoder") and spec.get("decoder_target_modules"):
            decoder = ", ".join(f"`{t}`" for t in spec["decoder_target_modules"])
            text += f"; mask decoder transformer {decoder}"
        return text
    regex = spec.get("target_regex")
    if isinstance(regex, str) and regex:
        return f"modules matching `{regex}`"
    if isinstance(regex, list) and regex:
        return ", ".join(f"`{t}`" for t in regex)
    return ""


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in metrics.items():
        if key == "history" and isinstance(value, list):
            lines.append(f"- training history: {len(value)} epochs (in `{METADATA_FILE}`)")
        elif isinstance(value, dict):
            lines.append(f"- {_label(key)}:")
            for inner, item in value.items():
                if isinstance(item, dict):
                    pairs = "; ".join(f"{_label(k)} {_value(v)}" for k, v in item.items())
                    lines.append(f"  - {_label(inner)}: {pairs}")
                else:
                    lines.append(f"  - {_label(inner)}: {_value(item)}")
        else:
            lines.append(f"- {_label(key)}: {_value(value)}")
    return lines


def _label(key: Any) -> str:
    return " ".join(str(key).split())


def _value(value: Any) -> str:
    """One line of text for a metadata value (long lists summarised, floats rounded)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        if len(value) > _LONG_LIST:
            return f"{len(value)} items (in `{METADATA_FILE}`)"
        return ", ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{_label(k)} {_value(v)}" for k, v in value.items())
    return " ".join(str(value).split())
