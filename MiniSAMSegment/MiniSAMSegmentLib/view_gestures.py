"""What a left-button press and release in a slice view mean for the MiniSAM effect. No Qt, no VTK.

A release close to the press is a click: a positive point, or a negative one with Shift. Farther away it is a
drag: a box, given by the four corners of the dragged rectangle. In a view rotated in its own plane, two
opposite corners of that rectangle do not bound it in the volume's slice (at 45 degrees they even share a
column); the bounding box of all four does. The threshold is in logical pixels: VTK reports event positions
in physical pixels, so on a HiDPI screen (device pixel ratio 2) it is doubled, and the same hand movement is a
click on every screen. The right button is left to Slicer (right-drag zoom, the view's context menu).

Keys (with the mouse over a slice view, no Ctrl/Alt/Meta): see :data:`SHORTCUTS`; every other key is Slicer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["DRAG_THRESHOLD", "SHORTCUTS", "Gesture", "drag_corners", "gesture", "shortcut"]

DRAG_THRESHOLD = 4
"""Logical pixels a release may lie from its press and still be a click."""

Point = tuple[float, float]

SHORTCUTS = {
    "c": "next candidate",  # the last single click's next SAM candidate mask (part, organ, both)
    "p": "propagate",  # Propagate from the selected segment's prompts
}
"""Key (VTK key symbol, case-insensitive) -> effect action."""


class Gesture(NamedTuple):
    kind: str  # "positive", "negative" or "box"
    points: tuple[Point, ...]  # the click, or the box's four corners (view positions)


def drag_corners(start: Sequence[float], end: Sequence[float]) -> tuple[Point, ...]:
    """The four corners of the view rectangle dragged from ``start`` to ``end``."""
    (x0, y0), (x1, y1) = start, end
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def gesture(
    start: Sequence[float],
    end: Sequence[float],
    negative: bool = False,
    device_pixel_ratio: float = 1.0,
    threshold: float = DRAG_THRESHOLD,
) -> Gesture:
    """The prompt of a press at ``start`` released at ``end`` (event positions in physical pixels).

    Arguments:
      negative: Shift was held at the press (a click is then a negative point; a drag is a box anyway).
      device_pixel_ratio: physical pixels per logical pixel of the view (1 on ordinary screens).
    """
    limit = threshold * max(1.0, float(device_pixel_ratio or 1.0))
    moved = max(abs(end[0] - start[0]), abs(end[1] - start[1]))
    if moved > limit:
        return Gesture("box", drag_corners(start, end))
    return Gesture("negative" if negative else "positive", ((start[0], start[1]),))


def shortcut(key: str | None, modified: bool = False) -> str | None:
    """The action of key ``key`` (a VTK key symbol), or None: not ours (or with Ctrl/Alt/Meta held)."""
    if modified or not key:
        return None
    return SHORTCUTS.get(key.lower())
