"""Prompt simulation as in SAM training: jittered boxes and points sampled from the mask or the error region."""

from __future__ import annotations

import numpy as np

from minisam.prompts import Prompt, mask_bounding_box


def jittered_box(
    mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1, max_jitter_px: float = 20.0
) -> np.ndarray:
    """The mask's bounding box with each side moved by up to ``jitter`` of the box size (≤ ``max_jitter_px``)."""
    box = mask_bounding_box(mask)
    if box is None:
        raise ValueError("cannot draw a box around an empty mask")
    height, width = mask.shape
    size = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2)
    noise = rng.normal(0.0, 1.0, 4) * np.minimum(jitter * size, max_jitter_px)
    jittered = box + noise
    jittered[[0, 2]] = np.clip(jittered[[0, 2]], 0, width - 1)
    jittered[[1, 3]] = np.clip(jittered[[1, 3]], 0, height - 1)
    x0, x1 = sorted(jittered[[0, 2]])
    y0, y1 = sorted(jittered[[1, 3]])
    return np.array([x0, y0, x1, y1])


def sample_points(region: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` (x, y) pixels drawn uniformly from a non-empty boolean ``region``."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        raise ValueError("cannot sample points from an empty region")
    picks = rng.integers(0, rows.size, count)
    return np.stack([cols[picks], rows[picks]], axis=1).astype(np.float64)


def random_prompt(
    mask: np.ndarray, rng: np.random.Generator, box_probability: float = 0.6, max_points: int = 3
) -> Prompt:
    """A box (with jitter), or 1..max_points positive points with an occasional negative one."""
    if rng.random() < box_probability:
        return Prompt(box=jittered_box(mask, rng))
    positives = sample_points(mask, int(rng.integers(1, max_points + 1)), rng)
    points, labels = positives, np.ones(len(positives), dtype=np.int64)
    background = ~mask
    if background.any() and rng.random() < 0.3:
        points = np.concatenate([points, sample_points(background, 1, rng)])
        labels = np.concatenate([labels, [0]])
    return Prompt(points=points, labels=labels)


def correction_click(
    truth: np.ndarray, prediction: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int] | None:
    """A corrective click in the error region: positive in missed foreground, negative in false positives."""
    missed = truth & ~prediction
    extra = prediction & ~truth
    if not missed.any() and not extra.any():
        return None
    positive = missed.sum() >= extra.sum()
    point = sample_points(missed if positive else extra, 1, rng)[0]
    return point, int(positive)
