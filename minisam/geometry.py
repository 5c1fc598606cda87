"""Exact coordinate transforms between voxel indices and physical (LPS, mm) space.

Conventions: indices are SimpleITK's, x first (i, j, k), continuous (0.0 is a voxel centre);
physical points are ITK's LPS millimetres. ``physical = origin + D @ (spacing * ijk)`` where
``D`` is the direction matrix whose columns are the world directions of the index axes. A numpy
array from SimpleITK is (Z, Y, X), so index axis i is array axis 2, j is 1 and k is 0.
"""

from __future__ import annotations

from itertools import permutations
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from minisam.errors import PromptError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from minisam.imageio import MedicalImage

__all__ = [
    "VIEW_WORLD_AXIS",
    "index_to_physical",
    "lps_to_ras",
    "physical_to_index",
    "ras_to_lps",
    "slice_axis_for",
]

VIEW_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
"""World (LPS) axis normal to each standard view: R-L for sagittal, A-P coronal, S-I axial."""


def _sitk_image(image: sitk.Image | MedicalImage) -> sitk.Image:
    ref = getattr(image, "image", image)  # MedicalImage carries its sitk.Image
    if not isinstance(ref, sitk.Image):
        raise TypeError(f"expected a SimpleITK image or MedicalImage, got {type(image).__name__}")
    return ref


def _geometry(image: sitk.Image | MedicalImage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = _sitk_image(image)
    dim = ref.GetDimension()
    origin = np.asarray(ref.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(ref.GetSpacing(), dtype=np.float64)
    direction = np.asarray(ref.GetDirection(), dtype=np.float64).reshape(dim, dim)
    return origin, spacing, direction


def _points(points: ArrayLike, dim: int, what: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] != dim:
        raise PromptError(
            f"{what} must have shape ({dim},) or (N, {dim}) for a {dim}D image, got {array.shape}"
        )
    return array


def index_to_physical(image: sitk.Image | MedicalImage, ijk: ArrayLike) -> np.ndarray:
    """Continuous index (x first) to physical LPS mm.

    Arguments:
      image: the reference image (only its geometry is used).
      ijk: one index (dim,) or N indices (N, dim), x first.

    Returns:
      float64 points of the same shape.
    """
    origin, spacing, direction = _geometry(image)
    pts = _points(ijk, origin.size, "index")
    # Row-vector form of origin + D @ (spacing * ijk), vectorised over points.
    return origin + (pts * spacing) @ direction.T


def physical_to_index(image: sitk.Image | MedicalImage, xyz: ArrayLike) -> np.ndarray:
    """Physical LPS mm to continuous index (x first); exact inverse of :func:`index_to_physical`.

    Arguments:
      image: the reference image.
      xyz: one point (dim,) or N points (N, dim).

    Returns:
      float64 continuous indices of the same shape (not rounded, not bounds-checked).
    """
    origin, spacing, direction = _geometry(image)
    pts = _points(xyz, origin.size, "physical point")
    # Solve rather than assume D orthonormal: some files carry slightly skewed directions.
    local = np.linalg.solve(direction, (pts - origin).T).T
    return local / spacing


def lps_to_ras(points: ArrayLike) -> np.ndarray:
    """Flip the first two coordinates (LPS <-> RAS); works on (3,) or (N, 3)."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., 0] *= -1.0
    out[..., 1] *= -1.0
    return out


def ras_to_lps(points: ArrayLike) -> np.ndarray:
    """Flip the first two coordinates (RAS <-> LPS); works on (3,) or (N, 3)."""
    return lps_to_ras(points)


def _index_axis_per_world_axis(direction: np.ndarray) -> tuple[int, ...]:
    """For each world axis, the index axis aligned with it (a one-to-one assignment).

    Taking the arg-max per world axis independently can give two views the same axis on an
    oblique volume; choosing the permutation with the largest total alignment cannot.
    """
    weights = np.abs(direction)  # weights[w, a]: world component w of index axis a
    best = max(
        permutations(range(direction.shape[0])),
        key=lambda perm: sum(weights[w, a] for w, a in enumerate(perm)),
    )
    return tuple(best)


def slice_axis_for(image: sitk.Image | MedicalImage, view: str | int) -> int:
    """Numpy array axis (0, 1 or 2 of a (Z, Y, X) array) to slice along for a view.

    Arguments:
      image: a 3D reference image.
      view: "axial", "coronal" or "sagittal" (the index axis best aligned with S, A or R), or an
        array axis given directly as 0, 1, 2 or "0", "1", "2".

    Returns:
      the array axis.

    Raises:
      PromptError: unknown view, axis out of range or a 2D image.
    """
    ref = _sitk_image(image)
    dim = ref.GetDimension()
    if dim != 3:
        raise PromptError(f"a slice view needs a 3D volume, this image is {dim}D")
    if isinstance(view, (int, np.integer)) and not isinstance(view, bool):
        axis = int(view)
    elif isinstance(view, str) and view.strip().lstrip("-").isdigit():
        axis = int(view.strip())
    elif isinstance(view, str) and view.strip().lower() in VIEW_WORLD_AXIS:
        _, _, direction = _geometry(ref)
        index_axis = _index_axis_per_world_axis(direction)[VIEW_WORLD_AXIS[view.strip().lower()]]
        return dim - 1 - index_axis  # i -> array axis 2, j -> 1, k -> 0
    else:
        raise PromptError(
            f"unknown view {view!r}; expected axial, coronal, sagittal or an array axis 0, 1, 2"
        )
    if not 0 <= axis < dim:
        raise PromptError(f"slice axis {axis} out of range; expected 0, 1 or 2")
    return axis
