"""Exact coordinate transforms between voxel indices and physical (LPS, mm) space.

Conventions: indices are SimpleITK's, x first (i, j, k), continuous (0.0 is a voxel centre);
physical points are ITK's LPS millimetres. ``physical = origin + D @ (spacing * ijk)`` where
``D`` is the direction matrix whose columns are the world directions of the index axes. A numpy
array from SimpleITK is (Z, Y, X), so index axis i is array axis 2, j is 1 and k is 0.

:func:`slice_axis_from_direction` is the one rule for which array axis a view slices along; the CLI
(:func:`slice_axis_for`) and the Slicer glue (``slice_geometry.slice_axis``) only feed it a direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from minisam.errors import PromptError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from minisam.imageio import MedicalImage

__all__ = [
    "GRID_TOLERANCE",
    "MIN_ALIGNMENT",
    "VIEW_WORLD_AXIS",
    "VoxelGrid",
    "grid_mismatch",
    "index_to_physical",
    "lps_to_ras",
    "physical_to_index",
    "ras_to_lps",
    "slice_axis_for",
    "slice_axis_from_direction",
]

GRID_TOLERANCE = 1e-3
"""Two grids are the same when spacing, origin and direction cosines differ by at most 0.001 (mm or
cosine) plus 0.1 % of the value: far below any voxel, above the rounding of file headers."""

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


MIN_ALIGNMENT = 0.99
"""Least |cos| between a slice normal and the voxel axis it picks; below it the view is oblique."""

_SPACES = ("LPS", "RAS")


def _index_axis_per_world_axis(directions: np.ndarray) -> tuple[int, ...]:
    """For each world axis, the index axis aligned with it (a one-to-one assignment).

    Taking the arg-max per world axis independently can give two views the same axis on an
    oblique volume; choosing the permutation with the largest total alignment cannot. Ties (an
    index axis exactly 45 degrees between two world axes) go to the first permutation in
    lexicographic order, i.e. the pairing closest to R->i, A->j, S->k.
    """
    weights = np.abs(directions)  # weights[w, a]: world component w of index axis a
    candidates = list(permutations(range(directions.shape[0])))
    totals = [sum(weights[w, a] for w, a in enumerate(perm)) for perm in candidates]
    best = max(totals)
    return next(p for p, t in zip(candidates, totals, strict=True) if t >= best - 1e-9)


def slice_axis_from_direction(
    direction: ArrayLike,
    view: str | int | ArrayLike,
    *,
    space: str = "LPS",
    where: str = "the volume",
) -> int:
    """The one slice-axis rule: the axis (0, 1 or 2) of a (Z, Y, X) array to slice along for a view.

    Every caller (``minisam segment``, the Slicer effect and logic, ``batch_segment.py``) comes
    through here, so one volume is sliced the same way everywhere.

    Arguments:
      direction: 3x3 index-to-world direction, columns = world directions of the index axes i, j, k
        (x first, as SimpleITK's ``GetDirection()`` reshaped, or the 3x3 of Slicer's IJKToRAS;
        spacing in the columns is divided out). In LPS (SimpleITK, the default) or RAS (Slicer)
        as ``space`` says; RAS is converted to LPS here and nowhere else.
      view: one of
        - "axial", "coronal", "sagittal": the three views get three different array axes — the
          permutation of voxel axes to (S, A, R) with the largest total |cos| (on an axis-aligned
          volume that is simply the voxel axis along S, A or R);
        - an array axis 0, 1, 2 or "0", "1", "2", returned as is;
        - a slice normal (3 numbers, in ``space``, sign ignored): the voxel axis best aligned with
          it, which must be within ``MIN_ALIGNMENT`` (|cos| 0.99) of it.
      space: "LPS" or "RAS", the frame of ``direction`` and of a normal ``view``.
      where: how messages name the volume.

    Returns:
      the array axis (index axis i -> 2, j -> 1, k -> 0).

    Raises:
      PromptError: unknown view, axis out of range, a zero normal, a normal oblique to every voxel
        axis, or a direction that is not 3x3.
    """
    if space not in _SPACES:
        raise ValueError(f"space must be 'LPS' or 'RAS', got {space!r}")
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.shape != (3, 3):
        raise PromptError(
            f"a slice view needs a 3D volume; the direction of {where} is {matrix.shape}, not 3x3"
        )
    flip = np.array([-1.0, -1.0, 1.0]) if space == "RAS" else np.ones(3)
    directions = flip[:, None] * matrix  # the one RAS -> LPS conversion (rows are world axes)
    norms = np.linalg.norm(directions, axis=0)
    if not np.all(norms > 0):
        raise PromptError(f"the direction matrix of {where} has a zero column")
    directions = directions / norms

    if isinstance(view, (int, np.integer)) and not isinstance(view, bool):
        axis = int(view)
    elif isinstance(view, str):
        key = view.strip().lower()
        if key.lstrip("-").isdigit():
            axis = int(key)
        elif key in VIEW_WORLD_AXIS:
            index_axis = _index_axis_per_world_axis(directions)[VIEW_WORLD_AXIS[key]]
            return 2 - index_axis
        else:
            raise PromptError(
                f"unknown view {view!r}; expected axial, coronal, sagittal or an array axis 0, 1, 2"
            )
    else:
        return 2 - _axis_along_normal(directions, view, flip, where)
    if not 0 <= axis < 3:
        raise PromptError(f"slice axis {axis} out of range; expected 0, 1 or 2")
    return axis


def _axis_along_normal(directions: np.ndarray, view, flip: np.ndarray, where: str) -> int:
    """Index axis along a slice normal given in the direction's original space (strict)."""
    try:
        normal = np.asarray(view, dtype=np.float64)
    except (TypeError, ValueError):
        normal = np.empty(0)
    if isinstance(view, bool) or normal.shape != (3,) or not np.all(np.isfinite(normal)):
        raise PromptError(
            f"unknown view {view!r}; expected axial, coronal, sagittal, an array axis 0, 1, 2 "
            "or a slice normal of 3 numbers"
        )
    length = np.linalg.norm(normal)
    if not length > 0:
        raise PromptError("the slice normal is a zero vector")
    alignment = np.abs((flip * normal / length) @ directions)
    index_axis = int(np.argmax(alignment))
    if alignment[index_axis] < MIN_ALIGNMENT:
        raise PromptError(
            f"the slice view is oblique to {where}: "
            "use 'Rotate to volume plane' in the slice view menu"
        )
    return index_axis


def slice_axis_for(image: sitk.Image | MedicalImage, view: str | int | ArrayLike) -> int:
    """Numpy array axis (0, 1 or 2 of a (Z, Y, X) array) to slice along for a view.

    The SimpleITK face of :func:`slice_axis_from_direction` (direction and any normal in LPS).

    Arguments:
      image: a 3D reference image.
      view: "axial", "coronal" or "sagittal", an array axis 0, 1, 2 or "0", "1", "2", or a slice
        normal in LPS; see :func:`slice_axis_from_direction`.

    Returns:
      the array axis.

    Raises:
      PromptError: unknown view, axis out of range, an oblique normal or a 2D image.
    """
    ref = _sitk_image(image)
    dim = ref.GetDimension()
    if dim != 3:
        raise PromptError(f"a slice view needs a 3D volume, this image is {dim}D")
    _, _, direction = _geometry(ref)
    return slice_axis_from_direction(direction, view, space="LPS")


@dataclass(frozen=True)
class VoxelGrid:
    """A voxel grid without voxels, for :func:`grid_mismatch` where there is no SimpleITK image (a
    Slicer node, whose IJK-to-RAS matrix holds spacing, origin and direction in one).

    Attributes:
      size: voxels per index axis, x first.
      spacing, origin: per index axis / per physical axis.
      direction: the direction matrix, row-major (columns are the index axes' unit vectors).
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def from_matrix(cls, index_to_physical: ArrayLike, size: tuple[int, ...]) -> VoxelGrid:
        """The grid of ``size`` voxels whose index ``ijk`` lies at ``index_to_physical @ (ijk, 1)``
        (a 4x4 homogeneous matrix, e.g. Slicer's IJK-to-RAS)."""
        matrix = np.asarray(index_to_physical, dtype=np.float64)
        spacing = np.linalg.norm(matrix[:3, :3], axis=0)
        direction = matrix[:3, :3] / np.where(spacing > 0, spacing, 1.0)
        return cls(
            tuple(int(n) for n in size),
            tuple(float(v) for v in spacing),
            tuple(float(v) for v in matrix[:3, 3]),
            tuple(float(v) for v in direction.ravel()),
        )


def _grid(item) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Size, spacing, origin and direction of an image, a MedicalImage, a header-read file reader or
    a :class:`VoxelGrid`.

    Trailing dimensions of size 1 are dropped (as :func:`minisam.imageio.read_image` does), so a
    one-slice volume compares equal to the 2D image it is read as.
    """
    ref = getattr(item, "image", item)
    if isinstance(ref, VoxelGrid):
        size, spacing, origin, direction = ref.size, ref.spacing, ref.origin, ref.direction
    else:
        size = tuple(int(n) for n in ref.GetSize())
        spacing, origin, direction = ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection()
    dim = len(size)
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    while dim > 2 and size[-1] == 1:
        dim -= 1
        size, spacing, origin = size[:dim], spacing[:dim], origin[:dim]
        direction = direction[:dim, :dim]
    return size, spacing, origin, direction


def grid_mismatch(reference, other, tolerance: float = GRID_TOLERANCE) -> str | None:
    """How ``other``'s voxel grid differs from ``reference``'s, or None when they are the same.

    The one label-grid rule of ``train-adapter``, ``evaluate`` and MiniSAMTrain: a label map must lie
    on its image's grid (size, spacing, origin and direction within ``tolerance``), not merely have
    its shape, or its voxels would label other anatomy. The commands refuse a mismatch; MiniSAMTrain
    resamples such a segment onto the volume by physical position (as Slicer shows it) and says so.

    Arguments:
      reference: the image; a ``sitk.Image``, a MedicalImage, a ``sitk.ImageFileReader`` after
        ``ReadImageInformation`` (header only) or a :class:`VoxelGrid`.
      other: the label map, as any of those.
      tolerance: absolute and relative tolerance (:data:`GRID_TOLERANCE`).

    Returns:
      e.g. ``"spacing (1.0, 1.0, 2.0) differs from the image's (1.0, 1.0, 1.0)"``, or None.
    """
    ours, theirs = _grid(reference), _grid(other)
    if ours[0] != theirs[0]:
        return f"size {theirs[0]} differs from the image's {ours[0]}"
    for name, a, b in zip(("spacing", "origin", "direction"), ours[1:], theirs[1:], strict=True):
        if not np.allclose(b, a, rtol=tolerance, atol=tolerance):
            shown = [tuple(float(v) for v in np.round(m.ravel(), 4)) for m in (b, a)]
            return f"{name} {shown[0]} differs from the image's {shown[1]}"
    return None
