"""Slice samples resized and padded to a model's square input, stored compactly for fast epochs.

The padding is the model's pixel mean, which ``Sam.preprocess`` normalises to 0: exactly what
inference feeds the encoder (``SamEngine.embed`` pads after normalising). Padding with black
instead would train every non-square slice on an input the model never sees at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minisam.model_config import SamConfig
from minisam.training.slice_samples import SliceSample
from minisam.transforms import ResizeTransform


@dataclass
class ModelInputs:
    """``images`` (N, 3, S, S) uint8, ``masks`` (N, S, S) bool and each sample's unpadded (h, w).

    ``fill`` is the padding colour (0..255 RGB), the model's pixel mean.
    """

    images: torch.Tensor
    masks: torch.Tensor
    sizes: list[tuple[int, int]]
    cases: list[str]
    fill: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __len__(self) -> int:
        return len(self.sizes)


def to_model_inputs(samples: list[SliceSample], config: SamConfig) -> ModelInputs:
    """Resize every sample as inference does (same transform), then pad bottom/right to S × S."""
    size = config.image_size
    fill = tuple(float(v) for v in torch.tensor(config.pixel_mean).round().clamp(0, 255))
    images = (
        torch.tensor(fill).to(torch.uint8)[None, :, None, None].repeat(len(samples), 1, size, size)
    )
    masks = torch.zeros((len(samples), size, size), dtype=torch.bool)
    sizes = []
    resized_cache: dict[int, torch.Tensor] = {}
    for i, sample in enumerate(samples):
        transform = ResizeTransform.create(sample.mask.shape, size, config.resize_mode)
        h, w = transform.input_size
        key = id(sample.image)  # slices of one image share their resized copy
        if key not in resized_cache:
            resized_cache[key] = (
                transform.image_to_input(
                    sample.image, config.resize_filter, config.intensity_scaling
                )[0]
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        images[i, :, :h, :w] = resized_cache[key]
        mask = torch.as_tensor(sample.mask, dtype=torch.float32)[None, None]
        masks[i, :h, :w] = F.interpolate(mask, size=(h, w), mode="nearest")[0, 0] > 0.5
        sizes.append((h, w))
    return ModelInputs(images, masks, sizes, [s.case for s in samples], fill)
