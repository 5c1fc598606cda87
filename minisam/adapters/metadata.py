"""An adapter folder's layout and MiniSAM's description of it, ``minisam_adapter.json``.

An adapter is a folder::

    adapter_config.json          peft's config (exactly what PeftModel.save_pretrained writes)
    adapter_model.safetensors    peft's adapter tensors (base_model.model.<layer>.lora_A.weight, ...)
    README.md                    model card generated from the metadata (:mod:`.model_card`)
    minisam_adapter.json         name, modality, base model hash, spec, training summary, metrics, date

so ``peft.PeftModel.from_pretrained(sam, folder)`` loads it without MiniSAM. Reading the metadata
needs no peft (listing a library, resolving a choice); :func:`.validation.read_adapter` checks the
rest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safetensors import safe_open

from minisam.errors import ModelError

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "METADATA_FILE",
    "README_FILE",
    "REQUIRED_FILES",
    "WEIGHTS_FILE",
    "AdapterMetadata",
    "adapter_folder_size",
    "check_folder",
    "read_json_object",
    "read_metadata",
    "stored_parameters",
]

FORMAT = "minisam.adapter/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METADATA_FILE = "minisam_adapter.json"
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)


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


def read_metadata(folder: str | os.PathLike[str]) -> AdapterMetadata:
    """``minisam_adapter.json`` of an adapter folder (checks that the folder has all its files)."""
    folder = check_folder(Path(folder))
    data = read_json_object(folder / METADATA_FILE)
    return AdapterMetadata.from_dict(data, source=f"adapter {folder}: {METADATA_FILE}")


def check_folder(folder: Path) -> Path:
    """``folder`` if it is a folder holding all :data:`REQUIRED_FILES`, else a one-line ModelError."""
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


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line ModelError for a missing, unreadable or invalid file."""
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


def stored_parameters(weights_file: Path) -> int:
    """Number of values in a safetensors file, from its header (no tensor is read)."""
    with safe_open(str(weights_file), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())


def adapter_folder_size(folder: str | os.PathLike[str]) -> int:
    """Bytes on disk of the files in an adapter folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
