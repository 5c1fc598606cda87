"""Overlap and surface metrics for 2D and 3D binary masks, honouring voxel spacing.

Masks are any array-like of bool, int or float; nonzero means foreground. ``spacing`` has one value
per *array* axis, in numpy order (for a ``(z, y, x)`` volume: ``(sz, sy, sx)``), in millimetres;
it defaults to 1.0 on every axis, so distances are then in voxels.

Surface convention (DeepMind surface-distance / MONAI family): the surface of a mask is the mask
minus its binary erosion with the full-connectivity structuring element
``generate_binary_structure(ndim, ndim)`` and ``border_value=0``, so an object touching the array
edge has a surface there. Distances from one surface to the other come from
``distance_transform_edt(~surface, sampling=spacing)``. MONAI erodes with the face-connectivity
element instead, so on ragged shapes its surfaces hold slightly fewer voxels and its numbers differ
slightly from these. A voxel is "within tolerance" when its distance is ``<= tolerance_mm``.

HD95 is the maximum of the two *directed* 95th percentiles (linear interpolation, like
``numpy.percentile``), as MONAI's ``compute_hausdorff_distance(percentile=95)`` computes it, not the
95th percentile of the union of both distance sets.

Empty masks:

============================  ====  ====  ====  ============
case                          dice  iou   nsd   hd95
============================  ====  ====  ====  ============
both empty                    1.0   1.0   1.0   0.0
exactly one empty             0.0   0.0   0.0   ``inf``
============================  ====  ====  ====  ============

With exactly one mask empty, :func:`surface_distances` returns an empty array for the empty
mask's side and ``inf`` for every surface voxel of the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from minisam.errors import InputError

__all__ = [
    "dice",
    "hd95",
    "iou",
    "normalized_surface_distance",
    "segmentation_metrics",
    "surface_distances",
]


def _as_mask(array: ArrayLike, name: str) -> np.ndarray:
    """Convert an array-like to a boolean mask (nonzero = foreground).

    Arguments:
      array: bool, integer or floating-point array-like.
      name: argument name used in error messages.
    Returns:
      A boolean numpy array of the same shape.
    """
    try:
        values = np.asarray(array)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} cannot be read as an array: {error}") from error
    if values.dtype.kind not in "biuf":
        raise InputError(f"{name} must hold bool, int or float values, got dtype {values.dtype}")
    return values != 0


def _check_masks(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate two masks and return them as boolean arrays.

    Arguments:
      pred: predicted mask.
      truth: reference mask.
    Returns:
      ``(pred, truth)`` as boolean arrays of equal shape and ndim 2 or 3.
    """
    pred_mask, truth_mask = _as_mask(pred, "pred"), _as_mask(truth, "truth")
    if pred_mask.shape != truth_mask.shape:
        raise InputError(
            f"pred shape {pred_mask.shape} does not match truth shape {truth_mask.shape}"
        )
    if pred_mask.ndim not in (2, 3):
        raise InputError(
            f"masks must be 2D or 3D, got {pred_mask.ndim}D arrays of shape {pred_mask.shape}"
        )
    return pred_mask, truth_mask


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Validate voxel spacing against the mask dimensionality.

    Arguments:
      spacing: one positive finite value per array axis, or None for all 1.0.
      ndim: number of array axes of the masks.
    Returns:
      The spacing as a tuple of floats.
    """
    if spacing is None:
        return (1.0,) * ndim
    try:
        values = tuple(float(value) for value in np.asarray(spacing, dtype=float).ravel())
        shape = np.shape(spacing)
    except (TypeError, ValueError) as error:
        raise InputError(f"spacing must be a sequence of numbers, got {spacing!r}") from error
    if len(shape) != 1 or len(values) != ndim:
        raise InputError(
            f"spacing {spacing!r} must have one value per array axis ({ndim} for {ndim}D masks)"
        )
    if not all(math.isfinite(value) and value > 0 for value in values):
        raise InputError(f"spacing values must be positive and finite, got {spacing!r}")
    return values


def _check_tolerance(tolerance_mm: float) -> float:
    """Validate an NSD tolerance.

    Arguments:
      tolerance_mm: distance in mm; must be finite and >= 0.
    Returns:
      The tolerance as a float.
    """
    try:
        value = float(tolerance_mm)
    except (TypeError, ValueError) as error:
        raise InputError(f"tolerance_mm must be a number, got {tolerance_mm!r}") from error
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm!r}")
    return value


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its full-connectivity erosion (array border counts as empty).

    Arguments:
      mask: boolean array.
    Returns:
      Boolean array of the surface voxels.
    """
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def _directed(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Distances in mm from each voxel of ``from_surface`` to the nearest voxel of ``to_surface``.

    Arguments:
      from_surface: boolean surface the distances start from.
      to_surface: boolean surface the distances go to.
      spacing: voxel size per array axis.
    Returns:
      1D float array with one distance per voxel of ``from_surface`` (``inf`` if ``to_surface``
      is empty).
    """
    count = int(np.count_nonzero(from_surface))
    if not to_surface.any():
        return np.full(count, np.inf)
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return np.asarray(distance_map[from_surface], dtype=float)


def _distances(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Both directed surface-distance sets for validated boolean masks.

    Arguments:
      pred: boolean predicted mask.
      truth: boolean reference mask.
      spacing: voxel size per array axis.
    Returns:
      ``(pred_to_truth, truth_to_pred)`` distance arrays in mm.
    """
    pred_surface, truth_surface = _surface(pred), _surface(truth)
    return (
        _directed(pred_surface, truth_surface, spacing),
        _directed(truth_surface, pred_surface, spacing),
    )


def _nsd(pred_to_truth: np.ndarray, truth_to_pred: np.ndarray, tolerance_mm: float) -> float:
    """Surface Dice from both directed distance sets (both empty -> 1.0).

    Arguments:
      pred_to_truth: distances from the predicted surface to the reference surface.
      truth_to_pred: distances from the reference surface to the predicted surface.
      tolerance_mm: maximum distance counted as agreeing.
    Returns:
      Fraction of both surfaces within tolerance of the other.
    """
    total = pred_to_truth.size + truth_to_pred.size
    if total == 0:
        return 1.0
    within = np.count_nonzero(pred_to_truth <= tolerance_mm)
    within += np.count_nonzero(truth_to_pred <= tolerance_mm)
    return float(within / total)


def _hd95(pred_to_truth: np.ndarray, truth_to_pred: np.ndarray) -> float:
    """Max of the two directed 95th percentiles (both empty -> 0.0, one empty -> inf).

    Arguments:
      pred_to_truth: distances from the predicted surface to the reference surface.
      truth_to_pred: distances from the reference surface to the predicted surface.
    Returns:
      HD95 in mm.
    """
    if pred_to_truth.size == 0 and truth_to_pred.size == 0:
        return 0.0
    if pred_to_truth.size == 0 or truth_to_pred.size == 0:
        return math.inf
    return float(max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95)))


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of validated boolean masks (both empty -> 1.0)."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of validated boolean masks (both empty -> 1.0)."""
    union = int(np.count_nonzero(pred | truth))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred & truth)) / union


def dice(pred: ArrayLike, truth: ArrayLike) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)``.

    Arguments:
      pred: predicted 2D/3D mask (nonzero = foreground).
      truth: reference mask of the same shape.
    Returns:
      Dice in [0, 1]; 1.0 when both masks are empty.
    """
    return _dice(*_check_masks(pred, truth))


def iou(pred: ArrayLike, truth: ArrayLike) -> float:
    """Intersection over union (Jaccard) ``|P∩T| / |P∪T|``.

    Arguments:
      pred: predicted 2D/3D mask (nonzero = foreground).
      truth: reference mask of the same shape.
    Returns:
      IoU in [0, 1]; 1.0 when both masks are empty.
    """
    return _iou(*_check_masks(pred, truth))


def surface_distances(
    pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm between the surfaces of two masks (surface convention: module docstring).

    Arguments:
      pred: predicted 2D/3D mask (nonzero = foreground).
      truth: reference mask of the same shape.
      spacing: voxel size per array axis in numpy order; default 1.0 each.
    Returns:
      ``(pred_to_truth, truth_to_pred)``: 1D float arrays with one distance per surface voxel of
      pred (resp. truth) to the nearest surface voxel of the other mask; ``inf`` where the other
      mask is empty, an empty array where this mask is empty.
    """
    pred_mask, truth_mask = _check_masks(pred, truth)
    return _distances(pred_mask, truth_mask, _check_spacing(spacing, pred_mask.ndim))


def normalized_surface_distance(
    pred: ArrayLike,
    truth: ArrayLike,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = 1.0,
) -> float:
    """Normalized surface distance (surface Dice) at a tolerance.

    ``(n_pred_within + n_truth_within) / (n_pred_surface + n_truth_surface)``, where "within" means
    a surface voxel's distance to the other surface is ``<= tolerance_mm``.

    Arguments:
      pred: predicted 2D/3D mask (nonzero = foreground).
      truth: reference mask of the same shape.
      spacing: voxel size per array axis in numpy order; default 1.0 each.
      tolerance_mm: accepted distance in mm, >= 0.
    Returns:
      NSD in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    pred_mask, truth_mask = _check_masks(pred, truth)
    voxel = _check_spacing(spacing, pred_mask.ndim)
    tolerance = _check_tolerance(tolerance_mm)
    return _nsd(*_distances(pred_mask, truth_mask, voxel), tolerance)


def hd95(pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance, MONAI definition.

    The maximum of the two directed 95th percentiles (pred->truth and truth->pred, linear
    interpolation), as ``monai.metrics.compute_hausdorff_distance(percentile=95)``; not the
    percentile of the pooled distances.

    Arguments:
      pred: predicted 2D/3D mask (nonzero = foreground).
      truth: reference mask of the same shape.
      spacing: voxel size per array axis in numpy order; default 1.0 each.
    Returns:
      HD95 in mm; 0.0 when both masks are empty, ``inf`` when exactly one is.
    """
    pred_mask, truth_mask = _check_masks(pred, truth)
    return _hd95(*_distances(pred_mask, truth_mask, _check_spacing(spacing, pred_mask.ndim)))


def segmentation_metrics(
    pred: ArrayLike,
    truth: ArrayLike,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = 1.0,
) -> dict[str, float]:
    """All metrics at once, computing the surface distances a single time.

    Arguments:
      pred: predicted 2D/3D mask (nonzero = foreground).
      truth: reference mask of the same shape.
      spacing: voxel size per array axis in numpy order; default 1.0 each.
      tolerance_mm: NSD tolerance in mm, >= 0.
    Returns:
      ``{"dice", "iou", "nsd", "hd95"}`` as floats (empty-mask values: module docstring).
    """
    pred_mask, truth_mask = _check_masks(pred, truth)
    voxel = _check_spacing(spacing, pred_mask.ndim)
    tolerance = _check_tolerance(tolerance_mm)
    pred_to_truth, truth_to_pred = _distances(pred_mask, truth_mask, voxel)
    return {
        "dice": _dice(pred_mask, truth_mask),
        "iou": _iou(pred_mask, truth_mask),
        "nsd": _nsd(pred_to_truth, truth_to_pred, tolerance),
        "hd95": _hd95(pred_to_truth, truth_to_pred),
    }
