"""Coordinate transforms between slice pixels and model input, and prompt validation."""

from __future__ import annotations

import numpy as np
import pytest

from minisam.errors import PromptError
from minisam.prompts import (
    Prompt,
    box_from_mask,
    dominant_region,
    interior_point,
    mask_bounding_box,
)
from minisam.propagation import PropagationSettings, next_prompt
from minisam.transforms import ResizeTransform


def test_longest_side_resize_keeps_aspect_and_maps_points_exactly() -> None:
    transform = ResizeTransform.create((540, 800), 1024)
    assert transform.input_size == (691, 1024)  # 540 * 1024 / 800 = 691.2 -> 691
    points = np.array([[0, 0], [799, 539], [400, 270]])
    mapped = transform.points_to_input(points)
    np.testing.assert_allclose(mapped[1], [799 * 1024 / 800, 539 * 691 / 540])
    np.testing.assert_allclose(transform.points_to_original(mapped), points)
    boxes = transform.boxes_to_input(np.array([10, 20, 30, 40]))
    np.testing.assert_allclose(boxes[0], [12.8, 20 * 691 / 540, 38.4, 40 * 691 / 540])


def test_stretch_resize_scales_axes_independently() -> None:
    transform = ResizeTransform.create((256, 512), 1024, mode="stretch")
    assert transform.input_size == (1024, 1024)
    np.testing.assert_allclose(transform.points_to_input([[100, 100]]), [[200, 400]])


def test_image_resize_shape() -> None:
    transform = ResizeTransform.create((50, 100), 64)
    out = transform.image_to_input(np.zeros((50, 100, 3), dtype=np.float32))
    assert tuple(out.shape) == (1, 3, 32, 64)


@pytest.mark.parametrize(
    "prompt, words",
    [
        (Prompt.create(box=[10, 10, 5, 20]), "x0 <= x1"),
        (Prompt.create(box=[-1, 0, 5, 5]), "outside"),
        (Prompt.create(box=[0, 0, 100, 5]), "outside"),
        (Prompt.create(positive=[[100, 3]]), "--point 100 3 is off"),
        (Prompt.create(negative=[[3, -2]]), "--negative-point 3 -2 is off"),
        (Prompt.create(positive=[[float("nan"), 3]]), "is off"),
        (Prompt(), "no prompt"),
    ],
)
def test_invalid_prompts(prompt: Prompt, words: str) -> None:
    with pytest.raises(PromptError, match=words):
        prompt.validate((50, 100))


def test_prompts_from_masks() -> None:
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 30:50] = True
    np.testing.assert_array_equal(mask_bounding_box(mask), [30, 10, 49, 19])
    np.testing.assert_array_equal(box_from_mask(mask, margin=0.1), [28, 8, 51, 21])
    x, y = interior_point(mask)
    assert mask[int(y), int(x)] and 13 <= y <= 16
    assert (
        box_from_mask(np.zeros((5, 5), bool)) is None
        and interior_point(np.zeros((5, 5), bool)) is None
    )


def test_stray_pixels_do_not_inflate_the_propagated_box() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 40:70] = True  # the object: 600 pixels
    mask[2, 2] = mask[95, 97] = True  # isolated pixels far away
    mask[45:50, 75:90] = True  # a sizeable second part (75 px >= 10 % of 600) is kept
    region = dominant_region(mask)
    assert not region[2, 2] and not region[95, 97] and region[47, 80] and region[50, 50]
    prompt = next_prompt(mask, None, PropagationSettings(box_margin=0.0))
    np.testing.assert_array_equal(
        prompt.box, [38, 38, 91, 61]
    )  # bounding box ± the 2 px minimum margin
