"""Writing adapter folders: :func:`save_adapter` (an adapter of a model) and :func:`ship_adapter`
(a copy with the metadata for shipping), each atomic and read back before it counts.

The folder's layout and metadata: :mod:`.metadata`; its model card: :mod:`.model_card`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peft import PeftConfig, PeftModel, PeftType

from minisam.adapters.lora import AdapterSpec, check_adapter_name
from minisam.adapters.metadata import (
    CONFIG_FILE,
    METADATA_FILE,
    README_FILE,
    WEIGHTS_FILE,
    AdapterMetadata,
    stored_parameters,
)
from minisam.adapters.model_card import model_card, write_model_card
from minisam.adapters.validation import read_adapter
from minisam.atomic import atomic_folder
from minisam.errors import ModelError, OutputError
from minisam.modality import FAMILIES, family_for_dicom

__all__ = ["save_adapter", "ship_adapter"]

# peft (0.18+) warns at save when a lora_A / lora_B tensor is empty, blaming unsynchronised DeepSpeed
# ZeRO-3 / FSDP shards; an AdaLoRA layer whose budget pruned every rank is legitimately empty, so for
# AdaLoRA that one warning (a UserWarning subclass, PeftWarning) is silenced while saving.
_EMPTY_RANK_WARNING = r"Adapter .*: \d+ LoRA tensor\(s\) have invalid shape"


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
    family = family_for_dicom(meta.modality)
    if family is None:
        raise ModelError(
            f"adapter {meta.name!r}: unknown modality {meta.modality!r}; use a DICOM Modality code "
            f"or one of {', '.join(FAMILIES)}"
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
            meta.trainable_params = stored_parameters(tmp / WEIGHTS_FILE)
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
        with warnings.catch_warnings():
            if model.peft_config[name].peft_type == PeftType.ADALORA:
                warnings.filterwarnings("ignore", _EMPTY_RANK_WARNING, UserWarning)
            model.save_pretrained(str(staging), selected_adapters=[name])
    finally:
        if hasattr(model.peft_config[name], "rank_pattern"):
            model.peft_config[name].rank_pattern = saved_pattern
    written = staging if name == "default" else staging / name
    for item in (CONFIG_FILE, WEIGHTS_FILE):
        os.replace(written / item, tmp / item)
    shutil.rmtree(staging)


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
