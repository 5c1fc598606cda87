"""From world RAS (clicks, markups, ROI boxes) to a slice of the volume and a prompt in its pixels. No Qt.

A slice along numpy axis ``axis`` of the (Z, Y, X) = (k, j, i) array is an image whose pixel (x, y) is:
axis 0 (k fixed): x = i, y = j; axis 1 (j fixed): x = i, y = k; axis 2 (i fixed): x = j, y = k — the
convention of :meth:`minisam.volume_session.VolumeSession.predict` and of ``minisam segment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from minisam.errors import PromptError
from minisam.geometry import slice_axis_from_direction
from minisam.prompts import Prompt

from .volume_node import node_label, volume_arrays, world_to_local

__all__ = [
    "IN_PLANE_IJK",
    "SlicePrompt",
    "ijk_to_slice_prompt",
    "ras_to_ijk",
    "ras_to_slice_prompt",
    "roi_corners",
    "slice_axis",
]

IN_PLANE_IJK = {0: (0, 1), 1: (0, 2), 2: (1, 2)}
"""Array axis -> (IJK axis giving pixel x, IJK axis giving pixel y)."""


class SlicePrompt(NamedTuple):
    axis: int  # numpy axis of the (Z, Y, X) array
    index: int  # slice index along that axis
    prompt: Prompt  # in the slice's pixel coordinates


def _ijk_axes_in_world(volume_node) -> np.ndarray:
    """3x3 whose column ``a`` is the world-RAS direction of IJK axis ``a`` (parent transform in)."""
    local_to_world = np.linalg.inv(world_to_local(volume_node))
    return (local_to_world @ volume_arrays(volume_node).ijk_to_ras)[:3, :3]


def slice_axis(volume_node, view: str | int | Sequence[float]) -> int:
    """Numpy axis of the volume's array to slice along, by the core's one rule.

    Only the node's world IJK-to-RAS direction is read here; the rule itself is
    :func:`minisam.geometry.slice_axis_from_direction`, so the effect, the logic,
    ``batch_segment.py`` and ``minisam segment`` slice one volume the same way.

    Arguments:
      volume_node: the source volume.
      view: "axial", "coronal", "sagittal" (three distinct voxel axes, those best aligned with
        S, A, R together), an array axis 0/1/2, or a slice view's normal in world RAS (third
        column of the slice node's SliceToRAS).

    Raises:
      PromptError: unknown view name or axis, or a normal that is oblique to every voxel axis.
    """
    return slice_axis_from_direction(
        _ijk_axes_in_world(volume_node),
        view,
        space="RAS",
        where=f"volume {node_label(volume_node)}",
    )


def ras_to_ijk(
    volume_node, points_ras: Sequence[Sequence[float]], world: bool = True
) -> np.ndarray:
    """Continuous IJK (N, 3) of RAS points (N, 3); ``world`` applies the inverse of the parent transform."""
    points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    matrix = volume_arrays(volume_node).ras_to_ijk
    if world:
        matrix = matrix @ world_to_local(volume_node)
    homogeneous = np.c_[points, np.ones(len(points))]
    return (homogeneous @ matrix.T)[:, :3]


def roi_corners(roi_node) -> np.ndarray:
    """The 8 world-RAS corners (8, 3) of a vtkMRMLMarkupsROINode's axis-aligned bounds."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    return np.array(
        [[r, a, s] for r in bounds[0:2] for a in bounds[2:4] for s in bounds[4:6]], dtype=np.float64
    )


def _pixel(points_ijk: np.ndarray, axis: int) -> np.ndarray:
    x_axis, y_axis = IN_PLANE_IJK[axis]
    return points_ijk[:, [x_axis, y_axis]]


def ijk_to_slice_prompt(
    shape: Sequence[int],
    axis: int,
    positive_ijk: Sequence[Sequence[float]] = (),
    negative_ijk: Sequence[Sequence[float]] = (),
    box_ijk: Sequence[Sequence[float]] | None = None,
    index: int | None = None,
    where: str = "the volume",
) -> SlicePrompt:
    """A prompt on one slice from voxel positions.

    Arguments:
      shape: the (Z, Y, X) shape of the volume's array.
      axis: numpy axis to slice along.
      positive_ijk, negative_ijk: clicks as IJK (continuous allowed; rounded to the nearest voxel).
      box_ijk: two or more IJK corners of a box (a drag's two ends, or an ROI's eight corners); it is
        clipped to the slice and must overlap it.
      index: the slice; default the rounded mean of all given positions along the slice normal.
      where: how messages name the volume.

    Raises:
      PromptError: no prompt, a click outside the volume, a box that misses the slice, slice out of range.
    """
    positive = np.asarray(positive_ijk, dtype=np.float64).reshape(-1, 3)
    negative = np.asarray(negative_ijk, dtype=np.float64).reshape(-1, 3)
    box = None if box_ijk is None else np.asarray(box_ijk, dtype=np.float64).reshape(-1, 3)
    everything = np.vstack([positive, negative] + ([box] if box is not None else []))
    if len(everything) == 0:
        raise PromptError("no prompt given: click on the structure or drag a box around it")
    count = shape[axis]
    if index is None:
        index = int(np.rint(everything[:, 2 - axis].mean()))
    if not 0 <= index < count:
        raise PromptError(f"slice {index} is outside {where} (it has slices 0..{count - 1})")
    height, width = [n for a, n in enumerate(shape) if a != axis]
    limits = np.array([width - 1, height - 1], dtype=np.float64)

    def clicks(points: np.ndarray, kind: str) -> list[list[float]]:
        pixels = np.rint(_pixel(points, axis))
        for (x, y), voxel in zip(pixels, np.rint(points).astype(int), strict=True):
            if not (0 <= x <= limits[0] and 0 <= y <= limits[1]):
                raise PromptError(f"the {kind} click at voxel {tuple(voxel)} is outside {where}")
        return pixels.tolist()

    corners = None
    if box is not None:
        pixels = np.rint(_pixel(box, axis))
        low = np.clip(pixels.min(axis=0), 0, limits)
        high = np.clip(pixels.max(axis=0), 0, limits)
        if np.any(pixels.max(axis=0) < 0) or np.any(pixels.min(axis=0) > limits):
            raise PromptError(f"the box lies outside slice {index} of {where}")
        corners = [low[0], low[1], high[0], high[1]]
    prompt = Prompt.create(clicks(positive, "positive"), clicks(negative, "negative"), corners)
    return SlicePrompt(axis=axis, index=index, prompt=prompt)


def ras_to_slice_prompt(
    volume_node,
    view: str | int | Sequence[float],
    positive_ras: Sequence[Sequence[float]] = (),
    negative_ras: Sequence[Sequence[float]] = (),
    box=None,
    index: int | None = None,
    world: bool = True,
) -> SlicePrompt:
    """A slice prompt from world-RAS clicks and/or a box.

    Arguments:
      volume_node: the source volume (its parent transform is honoured when ``world``).
      view: see :func:`slice_axis` (a view name, an array axis, or a slice view's RAS normal).
      positive_ras, negative_ras: click positions, (N, 3) RAS.
      box: a vtkMRMLMarkupsROINode (its RAS bounds) or two or more RAS corners.
      index: the slice; default from the positions (the ROI's centre for an ROI).
      world: the positions are world RAS (True) or the volume's local RAS (False).
    """
    axis = slice_axis(volume_node, view)
    if box is not None and hasattr(box, "GetRASBounds"):
        box = roi_corners(box)

    def to_ijk(points) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return ras_to_ijk(volume_node, points, world=world) if len(points) else points

    return ijk_to_slice_prompt(
        volume_arrays(volume_node).array.shape,
        axis,
        positive_ijk=to_ijk(positive_ras),
        negative_ijk=to_ijk(negative_ras),
        box_ijk=None if box is None else to_ijk(box),
        index=index,
        where=f"volume {node_label(volume_node)}",
    )
