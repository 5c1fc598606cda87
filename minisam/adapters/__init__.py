"""Per-modality adapters (LoRA / AdaLoRA via peft) on a frozen SAM base model.

- :mod:`~minisam.adapters.lora`: :class:`AdapterSpec` and :func:`attach_adapter` (training side);
- :mod:`~minisam.adapters.metadata`: an adapter folder's layout (peft's files plus MiniSAM's metadata);
- :mod:`~minisam.adapters.validation`: a folder checked on its own and against a model;
- :mod:`~minisam.adapters.injection`: :func:`load_adapter`, the checked adapter put into a model;
- :mod:`~minisam.adapters.adapter_io`: :func:`save_adapter` and :func:`ship_adapter` write folders;
- :mod:`~minisam.adapters.model_card`: the README.md model card generated from the metadata;
- :mod:`~minisam.adapters.library`: installed adapters and the automatic choice by modality;
- :mod:`~minisam.adapters.choice`: :func:`resolve_adapter`, the one resolver of a user's choice;
- :mod:`~minisam.adapters.switcher`: several adapters on one base model, switched in milliseconds.

The names below are imported on first use: ``minisam.adapters.choice`` (and "no adapter") must not
pay for importing peft.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minisam.adapters.adapter_io import save_adapter
    from minisam.adapters.choice import AdapterChoice, resolve_adapter
    from minisam.adapters.injection import load_adapter
    from minisam.adapters.library import AdapterInfo, AdapterLibrary
    from minisam.adapters.lora import (
        AdapterSpec,
        attach_adapter,
        count_adapter_parameters,
        count_trainable_parameters,
    )
    from minisam.adapters.metadata import AdapterMetadata
    from minisam.adapters.switcher import AdapterSwitcher
    from minisam.adapters.validation import read_adapter

_HOME = {
    "AdapterChoice": "choice",
    "AdapterInfo": "library",
    "AdapterLibrary": "library",
    "AdapterMetadata": "metadata",
    "AdapterSpec": "lora",
    "AdapterSwitcher": "switcher",
    "attach_adapter": "lora",
    "count_adapter_parameters": "lora",
    "count_trainable_parameters": "lora",
    "load_adapter": "injection",
    "read_adapter": "validation",
    "resolve_adapter": "choice",
    "save_adapter": "adapter_io",
}

__all__ = [
    "AdapterChoice",
    "AdapterInfo",
    "AdapterLibrary",
    "AdapterMetadata",
    "AdapterSpec",
    "AdapterSwitcher",
    "attach_adapter",
    "count_adapter_parameters",
    "count_trainable_parameters",
    "load_adapter",
    "read_adapter",
    "resolve_adapter",
    "save_adapter",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
