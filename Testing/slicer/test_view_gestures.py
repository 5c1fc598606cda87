"""Press/release in a slice view -> click or box: HiDPI threshold, boxes from four corners in rotated views."""

from __future__ import annotations

import numpy as np
import pytest
from MiniSAMSegmentLib.slice_geometry import ijk_to_slice_prompt
from MiniSAMSegmentLib.view_gestures import DRAG_THRESHOLD, drag_corners, gesture


def test_a_short_movement_is_a_click_and_shift_makes_it_negative() -> None:
    assert gesture((100, 80), (102, 77)) == ("positive", ((100, 80),))
    assert gesture((100, 80), (100, 80), negative=True) == ("negative", ((100, 80),))
    dragged = gesture((100, 80), (130, 40), negative=True)  # a drag is a box, Shift or not
    assert dragged.kind == "box" and dragged.points == drag_corners((100, 80), (130, 40))
    assert drag_corners((1, 2), (5, 9)) == ((1, 2), (5, 2), (5, 9), (1, 9))


@pytest.mark.parametrize(("ratio", "kind"), [(1.0, "box"), (2.0, "positive"), (0.0, "box")])
def test_the_drag_threshold_is_in_logical_pixels(ratio: float, kind: str) -> None:
    """Six physical pixels are a drag on an ordinary screen, three logical pixels (a click) at ratio 2."""
    moved = DRAG_THRESHOLD + 2
    assert gesture((10, 10), (10 + moved, 10), device_pixel_ratio=ratio).kind == kind


def test_a_box_dragged_in_a_rotated_view_is_bounded_by_its_four_corners() -> None:
    """A view turned 45 degrees in the slice plane: the dragged square's diagonal runs along j."""
    turn = np.radians(45)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])

    def to_ijk(xy) -> tuple[float, float, float]:
        i, j = rotation @ np.asarray(xy, dtype=float) + [60, 20]
        return (i, j, 5.0)

    start, end = (0, 0), (40, 40)
    shape = (10, 100, 120)
    two = ijk_to_slice_prompt(shape, 0, box_ijk=[to_ijk(start), to_ijk(end)]).prompt.box
    four_corners = [to_ijk(xy) for xy in gesture(start, end).points]
    four = ijk_to_slice_prompt(shape, 0, box_ijk=four_corners).prompt.box
    assert two[2] - two[0] == 0  # two opposite corners: a box of no width
    # all four corners: the dragged square's bounding box in the slice, 2 x 40 / sqrt(2) wide
    assert four.tolist() == [32.0, 20.0, 88.0, 77.0]
    inside = np.array([to_ijk(xy)[:2] for xy in [(20, 20), (5, 30), (39, 1)]])  # in the square
    assert ((inside >= four[:2]) & (inside <= four[2:])).all()


def test_keyboard_shortcuts_are_ours_only_without_modifiers() -> None:
    from MiniSAMSegmentLib.view_gestures import shortcut

    assert shortcut("c") == shortcut("C") == "next candidate"
    assert shortcut("p") == "propagate"
    assert shortcut("c", modified=True) is None  # Ctrl+C and friends stay Slicer's
    assert shortcut("r") is None and shortcut(None) is None  # e.g. reset field of view
