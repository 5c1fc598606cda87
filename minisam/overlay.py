"""Overlay pictures a person can check at a glance: the slice, the mask, its outline and the prompts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from minisam.prompts import Prompt

MASK_RGB = np.array([255, 64, 64], dtype=np.float32)
POSITIVE_RGB = (0, 255, 0)
NEGATIVE_RGB = (255, 0, 255)
BOX_RGB = (255, 255, 0)


def render_overlay(
    rgb: np.ndarray, mask: np.ndarray, prompt: Prompt | None = None, alpha: float = 0.35
) -> np.ndarray:
    """An (H, W, 3) uint8 picture: ``rgb`` (0..255) with ``mask`` tinted, outlined and the prompt drawn."""
    picture = np.clip(np.asarray(rgb, dtype=np.float32), 0, 255).copy()
    mask = np.asarray(mask, dtype=bool)
    picture[mask] = (1 - alpha) * picture[mask] + alpha * MASK_RGB
    outline = mask & ~ndimage.binary_erosion(mask)
    picture[outline] = MASK_RGB
    out = picture.astype(np.uint8)
    if prompt is not None:
        if prompt.box is not None:
            _draw_box(out, prompt.box, BOX_RGB)
        if prompt.points is not None:
            for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
                _draw_disc(out, x, y, POSITIVE_RGB if label == 1 else NEGATIVE_RGB)
    return out


def _draw_box(out: np.ndarray, box: np.ndarray, color: tuple[int, int, int]) -> None:
    height, width = out.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = np.clip([x0, x1], 0, width - 1)
    y0, y1 = np.clip([y0, y1], 0, height - 1)
    out[y0, x0 : x1 + 1] = color
    out[y1, x0 : x1 + 1] = color
    out[y0 : y1 + 1, x0] = color
    out[y0 : y1 + 1, x1] = color


def _draw_disc(out: np.ndarray, x: float, y: float, color: tuple[int, int, int]) -> None:
    height, width = out.shape[:2]
    radius = max(2, min(height, width) // 100)
    rows, cols = np.ogrid[:height, :width]
    out[(rows - y) ** 2 + (cols - x) ** 2 <= radius**2] = color
