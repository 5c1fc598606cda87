"""Exact transforms between a slice's pixel grid and the model's square input.

SAM resizes the longest side to the model's input size and pads bottom/right ("longest_side"); MedSAM resizes
straight to the square ("stretch"). Prompts follow the same scale factors per axis, so a point at pixel (x, y) of
the slice lands on the same image content in the model input. Coordinates are (x, y) = (column, row) in pixel
units; segment-anything's prompt encoder adds 0.5 to reach pixel centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class ResizeTransform:
    """Scale from an original (H, W) slice to the model's resized, unpadded input (h, w)."""

    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @classmethod
    def create(
        cls, original_size: tuple[int, int], model_size: int, mode: str = "longest_side"
    ) -> ResizeTransform:
        height, width = original_size
        if mode == "stretch":
            return cls((height, width), (model_size, model_size))
        scale = model_size / max(height, width)
        return cls((height, width), (int(height * scale + 0.5), int(width * scale + 0.5)))

    @property
    def scale_xy(self) -> np.ndarray:
        """Per-axis factors (x, y) from original pixels to model-input pixels."""
        return np.array(
            [
                self.input_size[1] / self.original_size[1],
                self.input_size[0] / self.original_size[0],
            ],
            dtype=np.float64,
        )

    def points_to_input(self, points_xy: np.ndarray) -> np.ndarray:
        """Map (N, 2) pixel coordinates (x, y) of the original slice to model-input coordinates."""
        return np.asarray(points_xy, dtype=np.float64).reshape(-1, 2) * self.scale_xy

    def points_to_original(self, points_xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`points_to_input`."""
        return np.asarray(points_xy, dtype=np.float64).reshape(-1, 2) / self.scale_xy

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) boxes (x0, y0, x1, y1) to model-input coordinates."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.concatenate(
            [self.points_to_input(boxes[:, :2]), self.points_to_input(boxes[:, 2:])], 1
        )

    def image_to_input(
        self, rgb: np.ndarray, resize_filter: str = "bilinear", intensity_scaling: str = "fixed"
    ) -> torch.Tensor:
        """Resize an (H, W, 3) 0..255 image to a (1, 3, h, w) float tensor, still in 0..255.

        Arguments:
          resize_filter: "bilinear" (antialiased, on float values: MiniSAM's own models), "pil_bilinear"
            (SAM's predictor: PIL's bilinear on the 8-bit image) or "area" (LiteMedSAM's cv2 INTER_AREA on
            8-bit images: exact pixel-area averaging when shrinking, plain bilinear when enlarging, rounded
            to whole grey levels).
          intensity_scaling: "fixed" keeps the values; "minmax" stretches the resized image to its own
            min..max (LiteMedSAM's normalisation, here onto 0..255 so the model's pixel_std finishes it).
        """
        rgb = np.ascontiguousarray(rgb, dtype=np.float32)
        shrinking = self.input_size[0] < rgb.shape[0] or self.input_size[1] < rgb.shape[1]
        if resize_filter == "area" and shrinking:
            tensor = _area_resize(rgb, self.input_size)
        elif resize_filter == "pil_bilinear":
            tensor = _pil_bilinear_resize(rgb, self.input_size)
        elif tuple(rgb.shape[:2]) == self.input_size:
            tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        else:
            tensor = F.interpolate(
                torch.from_numpy(rgb).permute(2, 0, 1)[None],
                size=self.input_size,
                mode="bilinear",
                align_corners=False,
                antialias=resize_filter == "bilinear",  # cv2 enlarges INTER_AREA bilinearly
            )
        if resize_filter == "area":
            # LiteMedSAM resizes 8-bit images (cv2 rounds halves up); its encoder notices sub-level
            # differences (+-0.5 noise moves the embedding 7-12 %).
            tensor = torch.floor(tensor + 0.5).clamp(0, 255)
        if intensity_scaling == "minmax":
            low, high = tensor.min(), tensor.max()
            tensor = (tensor - low) / torch.clamp(high - low, min=1e-8) * 255.0
        return tensor


def _pil_bilinear_resize(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """SAM's ``ResizeLongestSide.apply_image``: the image as 8-bit RGB, resized by PIL (bilinear)."""
    image = Image.fromarray(np.floor(np.clip(rgb, 0, 255) + 0.5).astype(np.uint8))
    resized = np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(resized.copy()).permute(2, 0, 1)[None]


def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix of pixel-area averaging: each output pixel is the coverage-weighted
    mean of the source pixels its footprint overlaps (cv2's INTER_AREA when shrinking)."""
    scale = source / target
    starts = np.arange(target)[:, None] * scale
    edges = np.arange(source)[None, :]
    overlap = np.minimum(starts + scale, edges + 1) - np.maximum(starts, edges)
    return np.clip(overlap, 0, None) / scale


def _area_resize(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Pixel-area averaging of an (H, W, 3) image to ``size``, as a (1, 3, h, w) tensor."""
    rows = _area_weights(rgb.shape[0], size[0])
    cols = _area_weights(rgb.shape[1], size[1])
    channels = np.moveaxis(rgb.astype(np.float64), 2, 0)  # (3, H, W)
    resized = rows[None] @ channels @ cols.T[None]  # two matrix products, not a 5-index einsum
    return torch.from_numpy(resized.astype(np.float32))[None]
