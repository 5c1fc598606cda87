"""Image-encoder families behind one SAM: a registry from family name to its module.

Every family module (``vit``, ``tiny_vit``) provides ``FAMILY``, ``Config`` (its frozen config dataclass) with
``image_size``, ``embedding_size``, ``out_chans``, ``family``, ``describe()``, ``to_dict()``/``from_dict()``,
``build(config)``, ``config_from_state(state, prefix)``, ``QUANTIZABLE_LINEAR`` (encoder-relative layer
names with a ``group`` of "attn" or "mlp"), ``LORA_TARGETS`` and ``LORA_BLOCK_SCOPE``. A new family is one
more file and one more row below, nothing else.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Union

import torch

from minisam.encoders import tiny_vit, vit
from minisam.errors import ModelError

FAMILIES: dict[str, ModuleType] = {vit.FAMILY: vit, tiny_vit.FAMILY: tiny_vit}

EncoderConfig = Union[vit.ViTConfig, tiny_vit.TinyViTConfig]  # noqa: UP007 (a runtime alias)


def family_module(family: str) -> ModuleType:
    """The module of encoder family ``family``."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise ModelError(
            f"unknown encoder family {family!r}; known: {', '.join(FAMILIES)}"
        ) from None


def encoder_config_to_dict(config: EncoderConfig) -> dict[str, Any]:
    """``config`` as JSON-able data tagged with its family."""
    return {"family": config.family, **config.to_dict()}


def encoder_config_from_dict(data: dict[str, Any]) -> EncoderConfig:
    """Inverse of :func:`encoder_config_to_dict` (untagged data is a ViT's)."""
    values = dict(data)
    return family_module(values.pop("family", vit.FAMILY)).Config.from_dict(values)


def build_encoder(config: EncoderConfig) -> torch.nn.Module:
    """An untrained image encoder for ``config``."""
    return family_module(config.family).build(config)


def encoder_config_from_state(
    state: dict[str, torch.Tensor], prefix: str = "image_encoder."
) -> EncoderConfig | None:
    """The encoder architecture of the first family that recognises ``state``, or None."""
    for module in FAMILIES.values():
        config = module.config_from_state(state, prefix)
        if config is not None:
            return config
    return None


def encoder_family(sam: torch.nn.Module) -> str:
    """The encoder family of a model made by :func:`minisam.model_config.build_sam`."""
    config = getattr(sam, "minisam_config", None)
    if config is None:
        raise ModelError(
            f"a {type(sam).__name__} not built by MiniSAM: its encoder family is unknown"
        )
    return config.family
