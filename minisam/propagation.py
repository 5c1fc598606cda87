"""Propagation of a mask to neighbouring slices: the next slice's prompt is derived from the previous mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minisam.prompts import Prompt, box_from_mask, dominant_region, interior_point


@dataclass(frozen=True)
class PropagationSettings:
    """When to keep going and how to prompt the next slice.

    Arguments:
      min_score: stop when the predicted IoU of a propagated mask drops below this.
      min_area_px: stop when the mask has fewer pixels than this (the structure ended).
      max_area_growth: stop when the area grows by more than this factor in one step (a leak).
      max_slices: at most this many slices per direction (None: up to the volume's end).
      box_margin: fraction of the previous mask's size added around its bounding box.
      add_interior_point: also click the previous mask's most interior pixel as a positive point.
      use_previous_logits: pass the previous slice's low-resolution logits as SAM's mask input.
    """

    min_score: float = 0.5
    min_area_px: int = 10
    max_area_growth: float = 3.0
    max_slices: int | None = None
    box_margin: float = 0.1
    add_interior_point: bool = False
    use_previous_logits: bool = False


def next_prompt(
    mask: np.ndarray, logits: np.ndarray | None, settings: PropagationSettings
) -> Prompt | None:
    """The prompt for the neighbouring slice derived from ``mask`` (None if the mask is empty)."""
    region = dominant_region(mask)
    box = box_from_mask(region, margin=settings.box_margin)
    if box is None:
        return None
    prompt = Prompt(box=box)
    if settings.add_interior_point:
        point = interior_point(region)
        prompt.points, prompt.labels = point[None], np.array([1])
    if settings.use_previous_logits and logits is not None:
        prompt.mask_logits = logits[None]
    return prompt


def stop_reason(
    mask: np.ndarray, score: float, previous_area: int, settings: PropagationSettings
) -> str | None:
    """Why propagation must stop at this mask, or None to accept it and go on."""
    area = int(mask.sum())
    if area < settings.min_area_px:
        return "mask vanished"
    if score < settings.min_score:
        return f"score {score:.2f} below {settings.min_score:.2f}"
    if previous_area > 0 and area > settings.max_area_growth * previous_area:
        return f"area grew {area / previous_area:.1f}x"
    return None
