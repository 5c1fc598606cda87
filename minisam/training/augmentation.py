"""Training augmentations for medical slices: intensity jitter and small random affine transforms.

Geometry: rotation within ±10°, isotropic scale 0.9-1.1 and a shift of up to 5 % of the slice,
about the centre of the slice's unpadded region, for a share of the samples. No flips: left and
right are anatomy in radiology (the heart is on the patient's left in a chest X-ray), and a mirrored
slice is not a plausible image. A sample whose mask would lose more than half of its area (pushed
out of the slice) keeps its original geometry, so every sample still has a non-empty target.
Outside the transformed slice, and in the padding, the image is the padding colour (the model's
pixel mean, see :mod:`minisam.training.model_inputs`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 10.0
MAX_SCALE_CHANGE = 0.10
MAX_SHIFT = 0.05  # of the slice's extent
MIN_KEPT_AREA = 0.5


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    sizes: list[tuple[int, int]] | None = None,
    fill: tuple[float, float, float] = (0.0, 0.0, 0.0),
    geometric: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented float images (B, 3, S, S, 0..255) and bool masks (B, S, S).

    Arguments:
      images: uint8 or float (B, 3, S, S) model inputs, padded bottom/right with ``fill``.
      masks: bool (B, S, S).
      generator: every random draw comes from it (reproducible per seed, epoch and step).
      sizes: each sample's unpadded (h, w); None means the whole S × S.
      fill: the padding colour.
      geometric: probability that a sample gets a random affine transform (0 disables).
    """
    count, _, size, _ = images.shape
    sizes = sizes or [(size, size)] * count
    x = _intensity_jitter(images.float() / 255.0, generator) * 255.0
    background = torch.tensor(fill, dtype=x.dtype)[None, :, None, None]
    valid = _valid_region(sizes, size)
    x = torch.where(valid[:, None], x, background)
    if geometric <= 0:
        return x, masks
    chosen = torch.rand(count, generator=generator) < geometric
    theta = _random_affines(sizes, size, generator)
    theta[~chosen] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    grid = F.affine_grid(theta, [count, 3, size, size], align_corners=False)
    moved = F.grid_sample(x - background, grid, mode="bilinear", align_corners=False) + background
    moved = torch.where(valid[:, None], moved, background)
    moved_masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False)
    moved_masks = (moved_masks[:, 0] > 0.5) & valid
    kept = moved_masks.flatten(1).sum(1) >= MIN_KEPT_AREA * masks.flatten(1).sum(1)
    keep_original = ~kept | ~chosen
    x = torch.where(keep_original[:, None, None, None], x, moved)
    return x, torch.where(keep_original[:, None, None], masks, moved_masks)


def _intensity_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma, contrast and brightness per image on 0..1 values."""
    count = x.shape[0]
    gamma = torch.exp(torch.randn(count, 1, 1, 1, generator=generator) * 0.25)
    contrast = 1 + torch.randn(count, 1, 1, 1, generator=generator) * 0.15
    brightness = torch.randn(count, 1, 1, 1, generator=generator) * 0.05
    return ((x.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)


def _valid_region(sizes: list[tuple[int, int]], size: int) -> torch.Tensor:
    """(B, S, S) bool: True inside each sample's unpadded (h, w)."""
    rows = torch.arange(size)[None, :, None]
    cols = torch.arange(size)[None, None, :]
    heights = torch.tensor([h for h, _ in sizes])[:, None, None]
    widths = torch.tensor([w for _, w in sizes])[:, None, None]
    return (rows < heights) & (cols < widths)


def _random_affines(
    sizes: list[tuple[int, int]], size: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, 2, 3) ``affine_grid`` matrices (output -> input, normalised coordinates of the S × S canvas)."""
    count = len(sizes)
    uniform = torch.rand(count, 4, generator=generator) * 2 - 1  # four draws in [-1, 1) each
    angle = uniform[:, 0] * math.radians(MAX_ROTATION_DEG)
    scale = 1 + uniform[:, 1] * MAX_SCALE_CHANGE
    extent = torch.tensor([[w / size, h / size] for h, w in sizes], dtype=torch.float32)
    centre = extent - 1  # the unpadded region spans [-1, 2 * extent - 1] in normalised coordinates
    shift = uniform[:, 2:] * MAX_SHIFT * 2 * extent
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    linear = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    # input = linear @ (output - centre) + centre - shift
    offset = centre - shift - torch.einsum("bij,bj->bi", linear, centre)
    return torch.cat([linear, offset[:, :, None]], dim=2)
