"""Adapter folders: peft's own files plus MiniSAM's metadata, written atomically, read back validated.

An adapter is a folder::

    adapter_config.json          peft's config (exactly what PeftModel.save_pretrained writes)
    adapter_model.safetensors    peft's adapter tensors (base_model.model.<layer>.lora_A.weight, ...)
    README.md                    model card generated from the metadata (:func:`model_card`)
    minisam_adapter.json         name, modality, base model hash, spec, training summary, metrics, date

so ``peft.PeftModel.from_pretrained(sam, folder)`` loads it without MiniSAM. :func:`load_adapter` checks
everything (files, JSON, tensors, base model, ranks, targeted layers) before it touches the model, and
takes an applied adapter back out if peft fails half way, so a failed load leaves the model as it was.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from minisam.adapters.lora import (
    AdapterSpec,
    base_layers,
    base_module,
    check_adapter_name,
    check_name_fits,
    describe,
    drop_empty_tuner_layers,
    mark_quantized,
)
from minisam.errors import ModelError, OutputError

FORMAT = "minisam.adapter/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METADATA_FILE = "minisam_adapter.json"
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
_PEFT_PREFIX = "base_model.model."
_SUPPORTED_TYPES = ("LORA", "ADALORA")
# Tensor names per adapted layer, after the layer's path.
_LAYER_TENSORS = {
    "LORA": ("lora_A.weight", "lora_B.weight"),
    "ADALORA": ("lora_A", "lora_B", "lora_E"),
}

# Adapters are chosen by image family; DICOM (0008,0060) Modality codes map onto these.
MODALITY_FAMILIES = (
    "CT",
    "MR",
    "US",
    "XRAY",
    "PET",
    "NM",
    "ENDOSCOPY",
    "PHOTO",
    "OCT",
    "PATHOLOGY",
)
_DICOM_TO_FAMILY = {
    "CT": "CT",
    "MR": "MR",
    "US": "US",
    "IVUS": "US",
    **dict.fromkeys(("CR", "DX", "MG", "RF", "XA", "PX", "IO", "RG", "DF", "DS"), "XRAY"),
    "PT": "PET",
    "NM": "NM",
    "ES": "ENDOSCOPY",
    **dict.fromkeys(("XC", "OP", "GM"), "PHOTO"),
    **dict.fromkeys(("OCT", "OPT", "IVOCT"), "OCT"),
    "SM": "PATHOLOGY",
}
_FAMILY_ALIASES = {"X-RAY": "XRAY", "XR": "XRAY", "MRI": "MR", "PET": "PET", "CBCT": "CT"}


def modality_family(code: str | None) -> str | None:
    """The adapter family of a DICOM Modality code or family name ("DX" -> "XRAY"), None if unknown."""
    if not code:
        return None
    key = str(code).strip().upper()
    if key in MODALITY_FAMILIES:
        return key
    return _DICOM_TO_FAMILY.get(key) or _FAMILY_ALIASES.get(key)


@dataclass
class AdapterMetadata:
    """MiniSAM's description of an adapter (``minisam_adapter.json``).

    Arguments:
      name: the adapter's name (folder name in a library, adapter name inside peft).
      modality: image family it was trained for (a DICOM code such as "DX" is normalised to "XRAY").
      base_hash: ``LoadedModel.base_hash()`` of the base model it was trained on.
      base_model: that model's name, for people.
      spec: the :class:`AdapterSpec` as a dict (filled by :func:`save_adapter` when empty).
      training_data: free-form summary (data sets, number of cases / slices, epochs).
      metrics: free-form evaluation results (e.g. {"dice": 0.87}).
      created: ISO 8601 UTC time (filled by :func:`save_adapter`).
      trainable_params: number of adapter parameters saved (filled by :func:`save_adapter`).
    """

    name: str
    modality: str
    base_hash: str
    base_model: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    trainable_params: int = 0
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> AdapterMetadata:
        missing = [k for k in ("name", "modality", "base_hash") if not data.get(k)]
        if missing:
            raise ModelError(f"{source} lacks {', '.join(missing)}")
        if data.get("format", FORMAT) != FORMAT:
            raise ModelError(f"{source} has format {data.get('format')!r}, expected {FORMAT!r}")
        known = {f.name for f in fields(cls)}
        # Unknown keys (from a newer MiniSAM) are ignored rather than refused.
        return cls(**{k: v for k, v in data.items() if k in known})


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


# ----------------------------------------------------------------------------------------------- save


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on success it takes ``target``'s place.

    A folder cannot be replaced by one ``os.replace``, so an existing target is first renamed aside,
    the new folder renamed in, and the old one deleted: readers see the old or the new folder (or, for
    an instant, none), never a half-written one. If the block raises, nothing changes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            _remove_tree(old)
        else:
            os.replace(tmp, target)
    finally:
        _remove_tree(tmp)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def save_adapter(
    model: PeftModel,
    name: str,
    folder: str | os.PathLike[str],
    metadata: AdapterMetadata | dict[str, Any],
) -> Path:
    """Write adapter ``name`` of ``model`` as an adapter folder, atomically.

    Arguments:
      model: the PeftModel holding the adapter (from :func:`attach_adapter` or :func:`load_adapter`).
      name: the adapter's name inside ``model``.
      folder: the folder to create (replaced if it exists; its parent is created).
      metadata: :class:`AdapterMetadata` or a dict of its fields; ``name`` defaults to ``name``, and
        ``spec``, ``created`` and ``trainable_params`` are filled in.
    """
    if not isinstance(model, PeftModel) or name not in model.peft_config:
        held = list(model.peft_config) if isinstance(model, PeftModel) else []
        raise ModelError(f"cannot save adapter {name!r}: the model holds adapters {held}")
    data = metadata.to_dict() if isinstance(metadata, AdapterMetadata) else dict(metadata)
    data.setdefault("name", name)
    meta = AdapterMetadata.from_dict(data, source=f"metadata of adapter {name!r}")
    check_adapter_name(meta.name)
    family = modality_family(meta.modality)
    if family is None:
        raise ModelError(
            f"adapter {meta.name!r}: unknown modality {meta.modality!r}; use a DICOM Modality code "
            f"or one of {', '.join(MODALITY_FAMILIES)}"
        )
    meta.modality = family
    config = model.peft_config[name]
    if not meta.spec:
        spec = getattr(config, "minisam_spec", None)
        meta.spec = spec.to_dict() if isinstance(spec, AdapterSpec) else _spec_of(config)
    meta.created = meta.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    folder = Path(folder)
    try:
        with atomic_folder(folder) as tmp:
            _save_peft_files(model, name, tmp)
            with safe_open(str(tmp / WEIGHTS_FILE), framework="pt") as handle:
                meta.trainable_params = sum(
                    _numel(handle.get_slice(k).get_shape()) for k in handle.keys()
                )
            (tmp / METADATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
            (tmp / README_FILE).write_text(model_card(meta), encoding="utf-8")
            read_adapter(tmp)  # what was written must load: refuse to install a bad folder
    except OSError as exc:
        raise OutputError(f"cannot write adapter folder {folder} ({exc})") from None
    return folder


def _save_peft_files(model: PeftModel, name: str, tmp: Path) -> None:
    """Let peft write its files, then flatten: it puts a non-"default" adapter in a subfolder.

    peft's boilerplate README.md is dropped; :func:`save_adapter` writes its own model card.
    """
    staging = tmp / ".peft"
    # AdaLoRA's state-dict hook rewrites config.rank_pattern in place; keep the live config intact.
    saved_pattern = copy.deepcopy(getattr(model.peft_config[name], "rank_pattern", None))
    try:
        model.save_pretrained(str(staging), selected_adapters=[name])
    finally:
        if hasattr(model.peft_config[name], "rank_pattern"):
            model.peft_config[name].rank_pattern = saved_pattern
    written = staging if name == "default" else staging / name
    for item in (CONFIG_FILE, WEIGHTS_FILE):
        os.replace(written / item, tmp / item)
    shutil.rmtree(staging)


# ----------------------------------------------------------------------------------------- model card

_FAMILY_NAMES = {
    "CT": "CT",
    "MR": "MR (MRI)",
    "US": "ultrasound",
    "XRAY": "X-ray (CR, DX, MG, XA, ...)",
    "PET": "PET",
    "NM": "nuclear medicine",
    "ENDOSCOPY": "endoscopy",
    "PHOTO": "photography / dermoscopy",
    "OCT": "optical coherence tomography",
    "PATHOLOGY": "digital pathology",
}
# Listed first, in this order, under "Training data".
_DATA_KEYS = ("dataset", "source", "licence", "license")
_LONG_LIST = 8  # longer lists are summarised by their length


def model_card(metadata: AdapterMetadata) -> str:
    """The adapter folder's README.md: a short model card written from ``minisam_adapter.json``."""
    meta = metadata
    spec = meta.spec or {}
    method = str(spec.get("method", "lora")).lower()
    family = modality_family(meta.modality) or meta.modality
    base_name = f"`{meta.base_model}`" if meta.base_model else ""
    described = _FAMILY_NAMES.get(family, family)
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
    tmp = folder / f".{README_FILE}.tmp-{secrets.token_hex(4)}"
    try:
        tmp.write_text(model_card(meta), encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
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


def _spec_of(config: PeftConfig) -> dict[str, Any]:
    """A description of a config that did not come from an AdapterSpec."""
    return {
        "method": str(config.peft_type.value).lower(),
        "rank": getattr(config, "r", None),
        "init_r": getattr(config, "init_r", None),
        "target_r": getattr(config, "target_r", None),
        "alpha": getattr(config, "lora_alpha", None),
        "dropout": getattr(config, "lora_dropout", None),
        "target_regex": config.target_modules
        if isinstance(config.target_modules, str)
        else sorted(config.target_modules or []),
    }


def _numel(shape: list[int] | tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


# ----------------------------------------------------------------------------------------------- read


def read_metadata(folder: str | os.PathLike[str]) -> AdapterMetadata:
    """``minisam_adapter.json`` of an adapter folder (checks that the folder has all its files)."""
    folder = _check_folder(Path(folder))
    data = _read_json(folder / METADATA_FILE)
    return AdapterMetadata.from_dict(data, source=f"adapter {folder}: {METADATA_FILE}")


def read_adapter(folder: str | os.PathLike[str]) -> AdapterContents:
    """Read an adapter folder and check it on its own: files, JSON, tensors, ranks against the config."""
    folder = _check_folder(Path(folder))
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


def _check_folder(folder: Path) -> Path:
    if not folder.exists():
        raise ModelError(f"adapter folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelError(f"adapter {folder} is not a folder (an adapter is a folder of files)")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(
            f"adapter folder {folder} lacks {', '.join(missing)}: not a MiniSAM adapter or copied incompletely"
        )
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read {path} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{path} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _read_peft_config(folder: Path, label: str) -> PeftConfig:
    data = _read_json(folder / CONFIG_FILE)
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


# ----------------------------------------------------------------------------------------------- load


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
    if isinstance(model, PeftModel):
        if name in model.peft_config:
            raise ModelError(f"the model already has an adapter named {name!r}")
        if model.peft_type != config.peft_type:
            raise ModelError(
                f"adapter {meta.name} is {config.peft_type.value} but the model holds "
                f"{model.peft_type.value} adapters: peft cannot mix the two in one model"
            )
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


def load_adapter(
    model: torch.nn.Module,
    folder: str | os.PathLike[str],
    expected_base_hash: str,
    name: str | None = None,
    activate: bool = True,
    trainable: bool = False,
) -> PeftModel:
    """Add the adapter stored in ``folder`` to ``model`` (a ``Sam`` or a PeftModel holding one).

    Arguments:
      model: the base model; a plain ``Sam`` is wrapped by peft (its layers are adapted in place).
      folder: an adapter folder written by :func:`save_adapter`.
      expected_base_hash: ``LoadedModel.base_hash()`` of ``model``; the adapter must have been trained on it.
      name: the name to give the adapter in the model (default: its metadata name).
      activate: make it the active adapter (else the model's active adapter, or the base, stays).
      trainable: leave its parameters trainable (to continue training); otherwise they are frozen.

    Returns:
      the PeftModel (``model`` itself when it already was one).

    Raises:
      ModelError: one line, for a missing folder or file, invalid JSON, unreadable tensors, another base
        model, or tensors that do not fit the model's layers; ``model`` is then left unchanged.
    """
    contents = read_adapter(folder)
    name = check_adapter_name(name or contents.metadata.name)
    check_fits(contents, model, expected_base_hash, name)
    config = _config_for(contents, name, trainable)
    try:
        with warnings.catch_warnings():
            # peft checks AdaLoRA's rank_pattern keys as if they were LoRA rank patterns; AdaLoRA
            # applies them itself when the weights are set, so its "did not match" warning is noise.
            warnings.filterwarnings(
                "ignore", message="The following rank_pattern keys", category=RuntimeWarning
            )
            if isinstance(model, PeftModel):
                return _add_to_peft_model(
                    model, config, contents.tensors, name, activate, trainable
                )
            return _wrap_plain_model(model, config, contents.tensors, name, activate, trainable)
    except ModelError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"adapter {contents.metadata.name} could not be applied ({reason})"
        ) from None


def _config_for(contents: AdapterContents, name: str, trainable: bool) -> PeftConfig:
    config = copy.deepcopy(contents.config)
    config.inference_mode = not trainable
    if config.peft_type.value == "ADALORA" and config.rank_pattern:
        # peft's resize takes "<layer>.lora_E.<name>" apart by whether <name> occurs in the key; with the
        # name appended the layer path comes out right whatever the adapter is called.
        config.rank_pattern = {
            f"{key.split('.lora_E')[0]}.lora_E.{name}": mask
            for key, mask in config.rank_pattern.items()
        }
    if contents.metadata.spec:
        try:
            config.minisam_spec = AdapterSpec.from_dict(contents.metadata.spec)
        except ModelError:
            pass  # the spec is informative only; the peft config is what gets applied
    return config


def _set_weights(
    model: PeftModel, config: PeftConfig, tensors: dict[str, torch.Tensor], name: str
) -> None:
    result = set_peft_model_state_dict(model, dict(tensors), adapter_name=name)
    # set_peft_model_state_dict loads with strict=False: check every tensor found its parameter.
    if result.unexpected_keys:
        raise ModelError(
            f"adapter {name}: tensors {describe(sorted(result.unexpected_keys))} fit no layer"
        )
    # Whole key components only: adapter "ct" must not claim the keys of an adapter "ct2".
    missing = [
        k
        for k in result.missing_keys
        if f".{name}." in f"{k}." and any(s in k for s in (".lora_A.", ".lora_B.", ".lora_E."))
    ]
    if missing:
        raise ModelError(f"adapter {name}: no tensors for {describe(sorted(missing))}")


def _add_to_peft_model(
    model: PeftModel,
    config: PeftConfig,
    tensors: dict[str, torch.Tensor],
    name: str,
    activate: bool,
    trainable: bool,
) -> PeftModel:
    previous = model.active_adapter
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    mark_quantized(base_module(model))
    try:
        model.add_adapter(name, config)
        _set_weights(model, config, tensors, name)
    except BaseException:
        # peft's add_adapter rolls back only its config; re-register it so delete_adapter finds the layers.
        model.peft_config.setdefault(name, config)
        model.delete_adapter(name)
        drop_empty_tuner_layers(model)
        if previous in model.peft_config:
            model.set_adapter(previous, inference_mode=True)
        for key, param in model.named_parameters():
            param.requires_grad_(flags.get(key, False))
        raise
    if activate:
        model.set_adapter(name, inference_mode=not trainable)
    return model


def _wrap_plain_model(
    sam: torch.nn.Module,
    config: PeftConfig,
    tensors: dict[str, torch.Tensor],
    name: str,
    activate: bool,
    trainable: bool,
) -> PeftModel:
    flags = {k: p.requires_grad for k, p in sam.named_parameters()}
    had_config = "peft_config" in vars(sam)
    mark_quantized(sam)
    try:
        peft_model = get_peft_model(sam, config, adapter_name=name)
        _set_weights(peft_model, config, tensors, name)
    except BaseException:
        # Put the original layers back (peft's unload() needs the PeftModel, which a failed
        # get_peft_model never returns, yet may already have replaced some layers).
        _strip_tuner_layers(sam)
        if not had_config:
            vars(sam).pop("peft_config", None)
        for key, param in sam.named_parameters():
            param.requires_grad_(flags.get(key, False))
        raise
    peft_model.set_adapter(name, inference_mode=not trainable)
    if not activate:
        peft_model.base_model.disable_adapter_layers()
    return peft_model


def _strip_tuner_layers(root: torch.nn.Module) -> None:
    for module in list(root.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(module, child_name, child.get_base_layer())


def adapter_folder_size(folder: str | os.PathLike[str]) -> int:
    """Bytes on disk of the files in an adapter folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def ship_adapter(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    base_model: str,
    training_data: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """Copy adapter folder ``source`` to ``target`` atomically, with metadata for shipping.

    Arguments:
      base_model: the base model's name as users know it (e.g. "default", not a work path).
      training_data / metrics: entries added to (or replacing) those of ``minisam_adapter.json``
        (dataset, licence, held-out results, ...). The model card (README.md) is regenerated.

    Returns:
      ``target``; an existing folder there is replaced only once the new one is complete.
    """
    source, target = Path(source), Path(target)
    meta = json.loads((source / METADATA_FILE).read_text())
    meta["base_model"] = base_model
    meta.setdefault("training_data", {}).update(training_data or {})
    meta.setdefault("metrics", {}).update(metrics or {})
    with atomic_folder(target) as tmp:
        for item in source.iterdir():
            if item.is_file() and item.name != METADATA_FILE:
                (tmp / item.name).write_bytes(item.read_bytes())
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        write_model_card(tmp)
    return target
