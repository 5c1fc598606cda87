"""Prompts on one slice: validation against the slice, and prompts derived from a mask (for propagation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from minisam.errors import PromptError

# How a lone click is answered (minisam.engine.SamEngine.predict): SAM's best of three candidates
# refined with its own bounding box, or as it is.
LONE_CLICK_MODES = ("refine", "raw")
# The margin of the box drawn around a lone click's best mask before the click is answered again with
# it (:func:`refinement_prompt`): chosen on the click-tuning validation slices (CXR lungs, HC18 heads,
# training volumes), where 0, 0.05 and 0.1 of the mask's size scored within 0.001 of each other.
REFINE_BOX_MARGIN = 0.05


@dataclass
class Prompt:
    """Points, labels and/or a box on one slice, in that slice's pixel coordinates (x = column, y = row).

    ``mask_logits`` optionally carries a previous low-resolution logit map (SAM's ``mask_input``).
    """

    points: np.ndarray | None = None  # (N, 2) float
    labels: np.ndarray | None = None  # (N,) int: 1 positive, 0 negative
    box: np.ndarray | None = None  # (4,) float: x0, y0, x1, y1
    mask_logits: np.ndarray | None = None  # (1, h, w) float

    @classmethod
    def create(
        cls,
        positive: list | None = None,
        negative: list | None = None,
        box: list | tuple | None = None,
    ) -> Prompt:
        """Build a prompt from lists of (x, y) positive/negative points and an optional box."""
        points = [tuple(p) for p in (positive or [])] + [tuple(p) for p in (negative or [])]
        labels = [1] * len(positive or []) + [0] * len(negative or [])
        return cls(
            points=np.asarray(points, dtype=np.float64).reshape(-1, 2) if points else None,
            labels=np.asarray(labels, dtype=np.int64) if points else None,
            box=np.asarray(box, dtype=np.float64).reshape(4) if box is not None else None,
        )

    def with_point(
        self, point: np.ndarray, label: int, mask_logits: np.ndarray | None = None
    ) -> Prompt:
        """This prompt plus one (x, y) point of ``label`` (1 positive, 0 negative), its box kept;
        ``mask_logits`` is the new prompt's previous-mask input (None: none)."""
        points = np.asarray(point, dtype=np.float64).reshape(1, 2)
        labels = np.array([label], dtype=np.int64)
        if self.points is not None:
            points = np.concatenate([self.points, points])
            labels = np.concatenate([self.labels, labels])
        return Prompt(points=points, labels=labels, box=self.box, mask_logits=mask_logits)

    @property
    def is_empty(self) -> bool:
        return self.points is None and self.box is None

    @property
    def is_ambiguous(self) -> bool:
        """One point and nothing else: part, object or whole? SAM answers it with three candidate
        masks and keeps the one its IoU head rates best (Kirillov et al. 2023, sec. 3)."""
        return (
            self.box is None
            and self.mask_logits is None
            and self.points is not None
            and len(self.points) == 1
        )

    def validate(self, shape: tuple[int, int], where: str = "the image") -> None:
        """Raise PromptError unless every point and the box lie on a slice of ``shape`` = (H, W)."""
        height, width = shape
        if self.is_empty:
            raise PromptError("no prompt given: pass --box x0 y0 x1 y1 and/or --point x y")
        if self.points is not None:
            if self.labels is None or len(self.labels) != len(self.points):
                raise PromptError("each point needs exactly one label")
            for (x, y), label in zip(self.points, self.labels, strict=True):
                if not (np.isfinite(x) and np.isfinite(y)) or not (
                    0 <= x <= width - 1 and 0 <= y <= height - 1
                ):
                    kind = "--point" if label == 1 else "--negative-point"
                    raise PromptError(
                        f"{kind} {x:g} {y:g} is off {where} (x must be in 0..{width - 1}, y in 0..{height - 1})"
                    )
        if self.box is not None:
            x0, y0, x1, y1 = (float(v) for v in self.box)
            if not np.all(np.isfinite(self.box)):
                raise PromptError("--box has non-finite coordinates")
            if x1 < x0 or y1 < y0:
                raise PromptError(f"--box {x0:g} {y0:g} {x1:g} {y1:g} needs x0 <= x1 and y0 <= y1")
            if x0 < 0 or y0 < 0 or x1 > width - 1 or y1 > height - 1:
                raise PromptError(
                    f"--box {x0:g} {y0:g} {x1:g} {y1:g} lies outside {where} "
                    f"(x in 0..{width - 1}, y in 0..{height - 1})"
                )


def mask_bounding_box(mask: np.ndarray) -> np.ndarray | None:
    """(x0, y0, x1, y1) of a 2D mask's foreground in pixel indices, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def box_from_mask(
    mask: np.ndarray, margin: float = 0.1, min_margin_px: float = 2.0
) -> np.ndarray | None:
    """Bounding box of ``mask`` enlarged by ``margin`` of its size (at least ``min_margin_px``), clipped to it."""
    box = mask_bounding_box(mask)
    if box is None:
        return None
    height, width = mask.shape
    pad_x = max(min_margin_px, margin * (box[2] - box[0] + 1))
    pad_y = max(min_margin_px, margin * (box[3] - box[1] + 1))
    return np.array(
        [
            max(0.0, box[0] - pad_x),
            max(0.0, box[1] - pad_y),
            min(width - 1.0, box[2] + pad_x),
            min(height - 1.0, box[3] + pad_y),
        ]
    )


def dominant_region(mask: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """``mask`` without stray islands: the connected components at least ``min_fraction`` of the largest.

    SAM masks often carry a few isolated pixels far from the object; a bounding box drawn around them would
    prompt the next slice with a box several times too large.
    """
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(components, keep)


def check_lone_click(value: str, flag: str = "--lone-click") -> str:
    """``value`` if it is one of :data:`LONE_CLICK_MODES`; else a one-line PromptError naming ``flag``."""
    if value not in LONE_CLICK_MODES:
        raise PromptError(f"{flag} {value!r}: expected {' or '.join(LONE_CLICK_MODES)}")
    return value


def refinement_prompt(click: Prompt, best: np.ndarray) -> Prompt | None:
    """What a lone ``click`` is answered again with (``lone_click="refine"``): the click plus the box
    around ``best``, SAM's best-rated mask for it, stray islands left out, :data:`REFINE_BOX_MARGIN`
    added; None for an empty mask."""
    box = box_from_mask(dominant_region(best), margin=REFINE_BOX_MARGIN)
    return None if box is None else Prompt(points=click.points, labels=click.labels, box=box)


def interior_point(mask: np.ndarray) -> np.ndarray | None:
    """The (x, y) of the foreground pixel farthest from the mask border (a safe positive click), or None."""
    if not mask.any():
        return None
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([col, row], dtype=np.float64)
