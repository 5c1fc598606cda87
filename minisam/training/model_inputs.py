"""Slice samples resized and padded to a model's square input, stored compactly for fast epochs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from minisam.model_config import SamConfig
from minisam.training.slice_samples import SliceSample
from minisam.transforms import ResizeTransform


@dataclass
class ModelInputs:
    """``images`` (N, 3, S, S) uint8, ``masks`` (N, S, S) bool and each sample's unpadded (h, w)."""

    images: torch.Tensor
    masks: torch.Tensor
    sizes: list[tuple[int, int]]
    cases: list[str]

    def __len__(self) -> int:
        return len(self.sizes)


def to_model_inputs(samples: list[SliceSample], config: SamConfig) -> ModelInputs:
    """Resize every sample as inference does (same transform), then pad bottom/right to S × S."""
    size = config.image_size
    images = torch.zeros((len(samples), 3, size, size), dtype=torch.uint8)
    masks = torch.zeros((len(samples), size, size), dtype=torch.bool)
    sizes = []
    resized_cache: dict[int, torch.Tensor] = {}
    for i, sample in enumerate(samples):
        transform = ResizeTransform.create(sample.mask.shape, size, config.resize_mode)
        h, w = transform.input_size
        key = id(sample.image)  # slices of one image share their resized copy
        if key not in resized_cache:
            resized_cache[key] = (
                transform.image_to_input(sample.image)[0].round().clamp(0, 255).to(torch.uint8)
            )
        images[i, :, :h, :w] = resized_cache[key]
        mask = torch.as_tensor(sample.mask, dtype=torch.float32)[None, None]
        masks[i, :h, :w] = F.interpolate(mask, size=(h, w), mode="nearest")[0, 0] > 0.5
        sizes.append((h, w))
    return ModelInputs(images, masks, sizes, [s.case for s in samples])


def augment(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity jitter (contrast, brightness, gamma) per image; geometry is left alone so padding stays put."""
    x = images.float() / 255.0
    count = x.shape[0]
    gamma = torch.exp(torch.randn(count, 1, 1, 1, generator=generator) * 0.25)
    contrast = 1 + torch.randn(count, 1, 1, 1, generator=generator) * 0.15
    brightness = torch.randn(count, 1, 1, 1, generator=generator) * 0.05
    x = ((x.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return x * 255.0, masks


def non_empty(masks: np.ndarray) -> bool:
    return bool(masks.any())
