"""Per-modality adapters (LoRA / AdaLoRA via peft) on a frozen SAM base model.

- :mod:`~minisam.adapters.lora`: :class:`AdapterSpec` and :func:`attach_adapter` (training side);
- :mod:`~minisam.adapters.adapter_io`: adapter folders in peft's format plus MiniSAM metadata;
- :mod:`~minisam.adapters.library`: installed adapters and the choice by DICOM modality;
- :mod:`~minisam.adapters.switcher`: several adapters on one base model, switched in milliseconds.
"""

from __future__ import annotations

from minisam.adapters.adapter_io import (
    AdapterMetadata,
    load_adapter,
    modality_family,
    read_adapter,
    save_adapter,
)
from minisam.adapters.library import AdapterInfo, AdapterLibrary
from minisam.adapters.lora import (
    AdapterSpec,
    attach_adapter,
    count_adapter_parameters,
    count_trainable_parameters,
)
from minisam.adapters.switcher import AdapterSwitcher

__all__ = [
    "AdapterInfo",
    "AdapterLibrary",
    "AdapterMetadata",
    "AdapterSpec",
    "AdapterSwitcher",
    "attach_adapter",
    "count_adapter_parameters",
    "count_trainable_parameters",
    "load_adapter",
    "modality_family",
    "read_adapter",
    "save_adapter",
]
