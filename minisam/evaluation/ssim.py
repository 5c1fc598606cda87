"""Structural similarity of two binary masks (MONAI's ``SSIMMetric``, Gaussian window).

Masks are compared as float images in {0, 1} with ``data_range`` 1. The window is 11 pixels, or
the largest odd size that fits a smaller image. Volumes: the mean 2D SSIM over the slices (along
axis 0) where either mask has foreground, since thin volumes do not fit a 3D window; 1.0 when both
masks are empty.
"""

from __future__ import annotations

import numpy as np
import torch

WINDOW = 11


def _ssim_2d(pred: np.ndarray, truth: np.ndarray) -> float:
    from monai.metrics import SSIMMetric

    size = min(WINDOW, *pred.shape)
    size = size if size % 2 == 1 else size - 1
    if size < 3:
        return float(np.array_equal(pred, truth))
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=size)
    a = torch.as_tensor(pred, dtype=torch.float32)[None, None]
    b = torch.as_tensor(truth, dtype=torch.float32)[None, None]
    return float(metric(a, b).item())


def mask_ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """SSIM of two boolean masks of equal shape, 2D or 3D (see module docstring)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    if pred.ndim == 2:
        return _ssim_2d(pred, truth)
    used = [i for i in range(pred.shape[0]) if pred[i].any() or truth[i].any()]
    if not used:
        return 1.0
    return float(np.mean([_ssim_2d(pred[i], truth[i]) for i in used]))
