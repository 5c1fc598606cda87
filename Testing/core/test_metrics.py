"""Tests of minisam.metrics against hand-computed values (arithmetic in the comments)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from scipy import ndimage

from minisam.errors import InputError
from minisam.metrics import (
    dice,
    hd95,
    iou,
    normalized_surface_distance,
    segmentation_metrics,
    surface_distances,
)


def _square(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def _parallel_lines(offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Two full-width one-voxel lines along axis 1, ``offset`` rows apart along axis 0."""
    pred = np.zeros((10, 8), dtype=bool)
    truth = np.zeros((10, 8), dtype=bool)
    pred[3, :] = True
    truth[3 + offset, :] = True
    return pred, truth


# ----------------------------------------------------------------------------- overlap metrics


def test_dice_iou_overlapping_squares() -> None:
    # pred 4x4 at rows/cols 0..3 (16 px), truth 4x4 at rows/cols 2..5 (16 px);
    # overlap rows/cols 2..3 = 2x2 = 4 px.
    pred = _square((10, 10), slice(0, 4), slice(0, 4))
    truth = _square((10, 10), slice(2, 6), slice(2, 6))
    # dice = 2*4 / (16+16) = 8/32 = 0.25
    assert dice(pred, truth) == pytest.approx(0.25)
    # iou = 4 / (16+16-4) = 4/28 = 1/7
    assert iou(pred, truth) == pytest.approx(1 / 7)


def test_identical_masks_are_perfect() -> None:
    mask = _square((12, 12), slice(3, 9), slice(2, 7))
    result = segmentation_metrics(mask, mask.copy(), spacing=(0.5, 2.0))
    assert result == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0}


def test_disjoint_masks_have_zero_overlap() -> None:
    pred = _square((10, 10), slice(0, 3), slice(0, 3))
    truth = _square((10, 10), slice(6, 9), slice(6, 9))
    assert dice(pred, truth) == 0.0
    assert iou(pred, truth) == 0.0


def test_non_bool_inputs_nonzero_is_foreground() -> None:
    # int list and float array with values 0.5 / 7: same masks as in the squares test -> 0.25
    pred = _square((10, 10), slice(0, 4), slice(0, 4)).astype(int).tolist()
    truth = _square((10, 10), slice(2, 6), slice(2, 6)) * 0.5
    truth[2, 2] = 7.0
    assert dice(pred, truth) == pytest.approx(0.25)


def test_3d_cube_vs_shifted_cube() -> None:
    # pred cube 4x4x4 at [2:6]^3 (64 vox), truth shifted by +1 along axis 0: [3:7,2:6,2:6].
    # overlap = axis0 3..5 (3) x 4 x 4 = 48 vox.
    pred = np.zeros((10, 10, 10), dtype=bool)
    truth = np.zeros_like(pred)
    pred[2:6, 2:6, 2:6] = True
    truth[3:7, 2:6, 2:6] = True
    # dice = 2*48 / (64+64) = 96/128 = 0.75 ; iou = 48 / (128-48) = 48/80 = 0.6
    assert dice(pred, truth) == pytest.approx(0.75)
    assert iou(pred, truth) == pytest.approx(0.6)


def test_3d_shifted_cube_surface_metrics_with_spacing() -> None:
    # Same cubes, spacing (2.0, 1.0, 1.0). Surface of a 4^3 cube = 64 - 2^3 interior = 56 voxels.
    # pred -> truth, per pred surface voxel:
    #   face axis0=2 (16 vox): outside truth, nearest truth surface is axis0=3 -> 1 * 2.0 = 2.0
    #   rings at axis0=3,4,5 (3 x 12 = 36 vox): also on truth's side faces -> 0.0
    #   face axis0=5 centre (2x2 = 4 vox): inside truth's interior; nearest truth surface is a
    #     side face one voxel away along axis 1 or 2 -> 1.0 (axis0=6 face would be 2.0)
    # -> 36 x 0.0, 4 x 1.0, 16 x 2.0 ; truth -> pred is the mirror image.
    pred = np.zeros((10, 10, 10), dtype=bool)
    truth = np.zeros_like(pred)
    pred[2:6, 2:6, 2:6] = True
    truth[3:7, 2:6, 2:6] = True
    spacing = (2.0, 1.0, 1.0)
    to_truth, to_pred = surface_distances(pred, truth, spacing)
    expected = [0.0] * 36 + [1.0] * 4 + [2.0] * 16
    assert sorted(to_truth.tolist()) == expected
    assert sorted(to_pred.tolist()) == expected
    # 95th pct of 56 sorted values: index 0.95*55 = 52.25, between sorted[52] = sorted[53] = 2.0
    assert hd95(pred, truth, spacing) == pytest.approx(2.0)
    # NSD at 1.5 mm: (40 + 40) / (56 + 56) = 80/112 = 5/7
    assert normalized_surface_distance(pred, truth, spacing, 1.5) == pytest.approx(5 / 7)
    result = segmentation_metrics(pred, truth, spacing, tolerance_mm=1.5)
    assert result == pytest.approx({"dice": 0.75, "iou": 0.6, "nsd": 5 / 7, "hd95": 2.0})


# ----------------------------------------------------------------------------- empty masks


def test_both_empty_convention() -> None:
    empty = np.zeros((6, 7), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert normalized_surface_distance(empty, empty, tolerance_mm=1.0) == 1.0
    assert hd95(empty, empty) == 0.0
    assert segmentation_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0}
    to_truth, to_pred = surface_distances(empty, empty)
    assert to_truth.size == 0 and to_pred.size == 0


@pytest.mark.parametrize("empty_side", ["pred", "truth"])
def test_one_empty_convention(empty_side: str) -> None:
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels, surface = 27 - 1 centre = 26
    empty = np.zeros_like(mask)
    pred, truth = (empty, mask) if empty_side == "pred" else (mask, empty)
    assert dice(pred, truth) == 0.0
    assert iou(pred, truth) == 0.0
    assert normalized_surface_distance(pred, truth, tolerance_mm=100.0) == 0.0
    assert hd95(pred, truth) == math.inf
    result = segmentation_metrics(pred, truth, spacing=(1.0, 2.0, 3.0))
    assert result == {"dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95": math.inf}
    to_truth, to_pred = surface_distances(pred, truth)
    empty_dist, full_dist = (to_truth, to_pred) if empty_side == "pred" else (to_pred, to_truth)
    assert empty_dist.size == 0
    assert full_dist.size == 26 and np.all(np.isinf(full_dist))


# ----------------------------------------------------------------------------- surfaces & spacing


def test_surface_uses_full_connectivity_and_array_border() -> None:
    # 3x3 all-foreground array: border_value=0 erodes everything but the centre -> 8 surface px.
    full = np.ones((3, 3), dtype=bool)
    to_truth, to_pred = surface_distances(full, full)
    assert to_truth.size == 8 and to_pred.size == 8
    # Plus sign of 5 px: the centre has background diagonal neighbours, so the full-connectivity
    # erosion removes it too -> all 5 px are surface (a face-connectivity erosion would keep it).
    plus = np.zeros((5, 5), dtype=bool)
    plus[2, 1:4] = True
    plus[1:4, 2] = True
    to_truth, _ = surface_distances(plus, plus)
    assert to_truth.size == 5
    assert np.all(to_truth == 0.0)


def test_anisotropic_spacing_parallel_lines() -> None:
    # Lines 2 rows apart along axis 0. A one-voxel-thick line is all surface; each voxel's nearest
    # voxel on the other line is straight across: 2 voxels x spacing[0].
    pred, truth = _parallel_lines(offset=2)
    # spacing[0] = 2.5 -> 2 * 2.5 = 5.0 mm for every surface voxel, both directions
    to_truth, to_pred = surface_distances(pred, truth, (2.5, 1.0))
    assert np.allclose(to_truth, 5.0) and to_truth.size == 8
    assert np.allclose(to_pred, 5.0) and to_pred.size == 8
    assert hd95(pred, truth, (2.5, 1.0)) == pytest.approx(5.0)
    # spacing along the other axis does not matter: 2 * 1.0 = 2.0 mm
    assert hd95(pred, truth, (1.0, 2.5)) == pytest.approx(2.0)
    assert hd95(pred, truth) == pytest.approx(2.0)


def test_anisotropic_spacing_parallel_planes_3d() -> None:
    # Planes axis0 = 1 and axis0 = 3 -> 2 voxels x 2.5 mm = 5.0 mm everywhere.
    pred = np.zeros((6, 5, 5), dtype=bool)
    truth = np.zeros_like(pred)
    pred[1] = True
    truth[3] = True
    assert hd95(pred, truth, (2.5, 0.7, 0.7)) == pytest.approx(5.0)
    assert normalized_surface_distance(pred, truth, (2.5, 0.7, 0.7), 4.9) == 0.0
    assert normalized_surface_distance(pred, truth, (2.5, 0.7, 0.7), 5.1) == 1.0


def test_nsd_tolerance_just_below_and_above_known_distance() -> None:
    # All 16 surface distances are 5.0 mm (see parallel-lines test).
    pred, truth = _parallel_lines(offset=2)
    spacing = (2.5, 1.0)
    assert normalized_surface_distance(pred, truth, spacing, 4.99) == 0.0  # 0/16
    assert normalized_surface_distance(pred, truth, spacing, 5.0) == 1.0  # "<=": 16/16
    assert normalized_surface_distance(pred, truth, spacing, 5.01) == 1.0
    assert normalized_surface_distance(pred, truth, spacing, 0.0) == 0.0


def test_nsd_partial_fraction() -> None:
    # pred: row 0 cols 0..3 (4 px); truth: row 0 cols 0..1 (2 px). Spacing 1.
    # pred -> truth: cols 0,1 -> 0 ; col 2 -> 1 ; col 3 -> 2.  truth -> pred: 0, 0.
    # tolerance 1.0: within = (3 + 2) / (4 + 2) = 5/6
    pred = np.zeros((3, 6), dtype=bool)
    truth = np.zeros_like(pred)
    pred[0, 0:4] = True
    truth[0, 0:2] = True
    assert normalized_surface_distance(pred, truth, tolerance_mm=1.0) == pytest.approx(5 / 6)


def test_hd95_single_voxel_offset() -> None:
    # Single voxels at (4,4) and (4,5): one distance each way = 1 voxel along axis 1.
    pred = np.zeros((9, 9), dtype=bool)
    truth = np.zeros_like(pred)
    pred[4, 4] = True
    truth[4, 5] = True
    assert hd95(pred, truth) == pytest.approx(1.0)
    assert hd95(pred, truth, (0.5, 3.0)) == pytest.approx(3.0)  # 1 x spacing[1]
    # Diagonal offset (0,0) -> (3,4): sqrt(3^2 + 4^2) = 5.0 ; with spacing (2,1): sqrt(36+16)
    far = np.zeros((9, 9), dtype=bool)
    corner = np.zeros_like(far)
    corner[0, 0] = True
    far[3, 4] = True
    assert hd95(corner, far) == pytest.approx(5.0)
    assert hd95(corner, far, (2.0, 1.0)) == pytest.approx(math.sqrt(52.0))


def test_hd95_is_max_of_directed_percentiles_not_pooled() -> None:
    # truth: row 0 cols 0..19 (20 px, all surface); pred: the single px (0, 0).
    # pred -> truth: [0].  truth -> pred: [0, 1, ..., 19].
    # directed 95th pct of 0..19: index 0.95*19 = 18.05 -> 18 + 0.05*(19-18) = 18.05 -> max = 18.05
    # (pooled 21 values [0,0,1..19]: index 0.95*20 = 19 -> 18.0, which we must NOT return)
    truth = np.zeros((5, 25), dtype=bool)
    truth[0, :20] = True
    pred = np.zeros_like(truth)
    pred[0, 0] = True
    assert hd95(pred, truth) == pytest.approx(18.05)
    assert hd95(truth, pred) == pytest.approx(18.05)


# ----------------------------------------------------------------------------- input errors


def _assert_one_line(error: pytest.ExceptionInfo[InputError]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(InputError) as error:
        dice(np.zeros((4, 5)), np.zeros((4, 6)))
    message = _assert_one_line(error)
    assert "(4, 5)" in message and "(4, 6)" in message


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,)])
def test_wrong_ndim_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError) as error:
        segmentation_metrics(np.ones(shape), np.ones(shape))
    assert str(len(shape)) + "D" in _assert_one_line(error)


@pytest.mark.parametrize(
    "spacing",
    [(1.0, 1.0, 1.0), (1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, float("nan")), 1.0, ("a", "b")],
)
def test_bad_spacing_rejected(spacing: object) -> None:
    mask = np.ones((4, 4), dtype=bool)
    for call in (surface_distances, hd95, normalized_surface_distance, segmentation_metrics):
        with pytest.raises(InputError) as error:
            call(mask, mask, spacing)
        assert "spacing" in _assert_one_line(error)


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf")])
def test_bad_tolerance_rejected(tolerance: float) -> None:
    mask = np.ones((4, 4), dtype=bool)
    with pytest.raises(InputError) as error:
        normalized_surface_distance(mask, mask, tolerance_mm=tolerance)
    assert "tolerance_mm" in _assert_one_line(error)
    with pytest.raises(InputError):
        segmentation_metrics(mask, mask, tolerance_mm=tolerance)


def test_non_numeric_mask_rejected() -> None:
    with pytest.raises(InputError) as error:
        iou(np.array([["a", "b"], ["c", "d"]]), np.ones((2, 2)))
    assert "pred" in _assert_one_line(error)


# ----------------------------------------------------------------------------- optional MONAI


def test_matches_monai_on_random_blobs() -> None:
    pytest.importorskip("monai")
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    if "spacing" not in inspect.signature(compute_hausdorff_distance).parameters:
        pytest.skip("this MONAI version has no spacing argument")
    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.standard_normal((32, 32, 20)), 2.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(field.shape), 1.5)
    truth = field > 0.02
    pred = (field + 0.08 * noise) > 0.02
    spacing = (0.9, 1.1, 2.5)
    tolerance = 2.0

    def as_tensor(mask: np.ndarray):
        return torch.from_numpy(mask[None, None].astype(np.float32))

    monai_hd95 = compute_hausdorff_distance(
        as_tensor(pred),
        as_tensor(truth),
        include_background=True,
        percentile=95,
        spacing=spacing,
    ).item()
    monai_nsd = compute_surface_dice(
        as_tensor(pred),
        as_tensor(truth),
        class_thresholds=[tolerance],
        include_background=True,
        spacing=spacing,
    ).item()
    # MONAI erodes with face connectivity, we with full connectivity: surfaces differ by a few
    # crease voxels, so allow one voxel of slack for HD95 and a few percent for NSD.
    assert hd95(pred, truth, spacing) == pytest.approx(monai_hd95, abs=max(spacing))
    assert normalized_surface_distance(pred, truth, spacing, tolerance) == pytest.approx(
        monai_nsd, abs=0.03
    )
