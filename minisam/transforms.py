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

    def image_to_input(self, rgb: np.ndarray) -> torch.Tensor:
        """Resize an (H, W, 3) 0..255 image to a (1, 3, h, w) float tensor (antialiased bilinear)."""
        tensor = torch.as_tensor(np.ascontiguousarray(rgb), dtype=torch.float32).permute(2, 0, 1)[
            None
        ]
        if tuple(tensor.shape[-2:]) == self.input_size:
            return tensor
        return F.interpolate(
            tensor, size=self.input_size, mode="bilinear", align_corners=False, antialias=True
        )
