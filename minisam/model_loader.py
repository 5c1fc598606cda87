"""Resolve ``--model NAME|PATH`` to a ready model: the embedded default, an official name, a preset, or a file."""

from __future__ import annotations

from pathlib import Path

import torch

from minisam import weights
from minisam.checkpoints import LoadedModel, load_minisam_checkpoint, load_official_checkpoint
from minisam.errors import ModelError
from minisam.model_config import PRESETS, build_sam

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "pretrained"
# The embedded default: LiteMedSAM with its prompt path taught clicks (pretrained/MODEL_CARD.md says
# why it, and not a distilled student, is the default).
DEFAULT_MODEL = PACKAGE_WEIGHTS / "litemedsam_clicks.safetensors"
# Models shipped inside the package, by name: they load offline, without a download.
PACKAGED_MODELS = {
    "default": DEFAULT_MODEL,
    "litemedsam-clicks": DEFAULT_MODEL,
}
RANDOM_PREFIX = "random:"


def known_model_names() -> list[str]:
    """Names ``--model`` accepts besides a file path."""
    return [
        *PACKAGED_MODELS,
        *weights.OFFICIAL_WEIGHTS,
        *(RANDOM_PREFIX + name for name in PRESETS),
    ]


def load_model(spec: str, *, download: bool = True, seed: int = 0) -> LoadedModel:
    """Load the model that ``spec`` names.

    Arguments:
      spec: "default" or another name of :data:`PACKAGED_MODELS` (shipped inside the package), an
        official name such as "sam_vit_b" (from the cache, downloaded and verified when allowed),
        "random:<preset>" (untrained, for timing and tests), or a path to a ``.safetensors``
        (MiniSAM) or ``.pth`` (segment-anything layout) checkpoint.
      download: allow downloading official weights missing from the cache.
      seed: initialisation seed for "random:" models.
    """
    if spec in PACKAGED_MODELS:
        path = PACKAGED_MODELS[spec]
        if not path.is_file():
            raise ModelError(f"the packaged model {spec!r} ({path}) is missing: reinstall minisam")
        return load_minisam_checkpoint(path)
    if spec.startswith(RANDOM_PREFIX):
        arch = spec[len(RANDOM_PREFIX) :]
        if arch not in PRESETS:
            raise ModelError(
                f"--model {spec}: unknown architecture {arch!r}; known: {', '.join(PRESETS)}"
            )
        torch.manual_seed(seed)
        return LoadedModel(
            sam=build_sam(PRESETS[arch]), config=PRESETS[arch], name=spec, card={"trained": False}
        )
    if spec in weights.OFFICIAL_WEIGHTS:
        entry = weights.OFFICIAL_WEIGHTS[spec]
        loaded = load_official_checkpoint(weights.fetch(spec, download=download), arch=entry.arch)
        loaded.name = spec
        return loaded
    path = Path(spec).expanduser()
    if path.suffix in (".safetensors", ".pth", ".pt") or path.exists():
        if not path.is_file():
            raise ModelError(f"--model {spec}: no such checkpoint file")
        if path.suffix == ".safetensors":
            from minisam.quantized_checkpoint import (
                is_quantized_checkpoint,
                load_quantized_checkpoint,
            )

            if is_quantized_checkpoint(path):
                return load_quantized_checkpoint(path)
            return load_minisam_checkpoint(path)
        return load_official_checkpoint(path)
    raise ModelError(
        f"--model {spec}: unknown model; known names: {', '.join(known_model_names())}, "
        "or a path to a .safetensors/.pth checkpoint"
    )
