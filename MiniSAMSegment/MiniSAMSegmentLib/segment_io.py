"""Masks into segments: oriented modifier images for the Segment Editor, and headless writes. No Qt.

Two routes:
- the effect passes :func:`replace_modifiers` images to ``scriptedEffect.modifySelectedSegmentByLabelmap``
  (Remove the slices, then Add the mask), so undo, masking and overwrite settings work as for any effect.
  Slicer requires them on the editor's reference geometry (``defaultModifierLabelmap()``), which differs
  from the source volume's grid for oversampled segmentations, segmentations made on another volume and
  transformed nodes: the mask, computed on the volume's grid, is resampled nearest-neighbour into it;
- scripts and tests call :func:`write_mask_to_segment`, which goes through a temporary labelmap volume node
  and ``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode`` and leaves other segments alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from minisam.atomic import atomic_output
from minisam.errors import InputError, OutputError

from .volume_node import node_label, volume_arrays

__all__ = [
    "MODES",
    "labelmap_oriented_image",
    "on_reference_grid",
    "replace_modifiers",
    "segment_array",
    "segment_region",
    "write_mask_to_segment",
    "write_segmentation",
]

MODES = ("replace_slice", "union", "replace")
DEFAULT_SEGMENT_NAME = "MiniSAM"


def _volume_to_segmentation(volume_node, segmentation_node) -> np.ndarray:
    """4x4 from the volume's local RAS to the segmentation's local RAS (their parent transforms)."""
    if segmentation_node is None:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    linear = slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode(), matrix
    )
    if not linear:
        raise InputError("the volume and the segmentation are related by a non-linear transform")
    return slicer.util.arrayFromVTKMatrix(matrix)


def _slab(labels: np.ndarray, shape: tuple[int, ...], axis: int | None, indices: list[int]):
    """(3D array, extent offset per IJK axis) holding ``labels`` for the given slices of ``shape``."""
    labels = np.asarray(labels)
    if labels.ndim == 3:
        if labels.shape != shape:
            raise InputError(f"labels of shape {labels.shape} do not match the volume {shape}")
        if axis is None or not indices:
            return labels, (0, 0, 0)
        low, high = min(indices), max(indices)
        slab = np.take(labels, range(low, high + 1), axis=axis)
    else:
        if axis is None or len(indices) != 1:
            raise InputError("a 2D mask needs its slice axis and index")
        expected = tuple(n for a, n in enumerate(shape) if a != axis)
        if labels.shape != expected:
            raise InputError(f"a slice mask of shape {labels.shape} does not match {expected}")
        low = indices[0]
        if not 0 <= low < shape[axis]:
            raise InputError(f"slice {low} is outside the volume (0..{shape[axis] - 1})")
        slab = np.expand_dims(labels, axis)
    offset = [0, 0, 0]
    offset[2 - axis] = low  # numpy axis -> IJK axis
    return slab, tuple(offset)


def labelmap_oriented_image(
    volume_node,
    labels: np.ndarray,
    axis: int | None = None,
    index: int | None = None,
    segmentation_node=None,
    indices: Iterable[int] | None = None,
):
    """A binary vtkOrientedImageData (1 = inside) on the volume's voxel grid.

    Arguments:
      volume_node: gives the grid (extent and IJK-to-RAS).
      labels: (Z, Y, X) labels of the whole volume, or one (H, W) slice mask.
      axis, index: where a 2D mask lies; for 3D labels, ``axis`` with ``indices`` (or ``index``) limits the
        image to those slices' span.
      segmentation_node: express the image in this segmentation's coordinates (its parent transform).

    Returns:
      the image; its extent covers only the given slices when they were given.
    """
    shape = volume_arrays(volume_node).array.shape
    chosen = sorted(set(indices)) if indices is not None else ([index] if index is not None else [])
    slab, offset = _slab(labels, shape, axis, chosen)
    image = slicer.vtkOrientedImageData()
    extent = []
    for ijk_axis in range(3):
        extent += [offset[ijk_axis], offset[ijk_axis] + slab.shape[2 - ijk_axis] - 1]
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(slab.shape)
    voxels[:] = np.asarray(slab) != 0
    ijk_to_ras = (
        _volume_to_segmentation(volume_node, segmentation_node)
        @ volume_arrays(volume_node).ijk_to_ras
    )
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return image


def _image_to_world(image) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def on_reference_grid(image, reference):
    """``image`` resampled nearest-neighbour onto the grid of ``reference`` (a vtkOrientedImageData whose
    IJK-to-RAS and extent are used, not its voxels), over the part of its extent that ``image`` covers.

    Raises:
      InputError: ``image`` lies outside ``reference``'s extent.
    """
    extent = image.GetExtent()
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (extent[0] - 0.5, extent[1] + 0.5)
            for j in (extent[2] - 0.5, extent[3] + 0.5)
            for k in (extent[4] - 0.5, extent[5] + 0.5)
        ]
    ).T
    ijk = (np.linalg.inv(_image_to_world(reference)) @ _image_to_world(image) @ corners)[:3]
    # voxels of the reference whose centres lie inside the image's box (a hair's tolerance for rounding)
    low = np.ceil(ijk.min(axis=1) - 1e-6).astype(int)
    high = np.floor(ijk.max(axis=1) + 1e-6).astype(int)
    bounds = reference.GetExtent()
    sub = []
    for a in range(3):
        sub += [max(bounds[2 * a], int(low[a])), min(bounds[2 * a + 1], int(high[a]))]
    if any(sub[2 * a] > sub[2 * a + 1] for a in range(3)):
        raise InputError(
            "the slice lies outside the segmentation's geometry: widen it in Segmentations > Specify geometry"
        )
    grid = slicer.vtkOrientedImageData()
    grid.SetExtent(*sub)
    grid.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(_image_to_world(reference)))
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        image, grid, resampled
    ):
        raise OutputError("the mask cannot be resampled onto the segmentation's geometry")
    return resampled


def replace_modifiers(
    volume_node,
    labels,
    axis: int,
    indices: Iterable[int],
    segmentation_node=None,
    reference=None,
):
    """(clear, add) modifier images that replace the given slices of a segment with ``labels``.

    Apply ``clear`` with ModificationModeRemove, then ``add`` with ModificationModeAdd. (ModificationModeSet
    would empty the whole segment, not only these slices.) With ``reference`` (the Segment Editor's
    ``defaultModifierLabelmap()``) both are on its grid, as ``modifySelectedSegmentByLabelmap`` requires;
    without, on the volume's grid.
    """
    indices = sorted(set(int(i) for i in indices))
    shape = volume_arrays(volume_node).array.shape
    plane = tuple(n for a, n in enumerate(shape) if a != axis)
    if np.asarray(labels).ndim == 2:
        ones = np.ones(plane, dtype=np.uint8)
    else:
        ones = np.zeros(shape, dtype=np.uint8)
        np.moveaxis(ones, axis, 0)[indices] = 1
        labels = np.where(ones != 0, np.asarray(labels), 0)  # only the listed slices
    clear = labelmap_oriented_image(
        volume_node, ones, axis, segmentation_node=segmentation_node, indices=indices
    )
    add = labelmap_oriented_image(
        volume_node, labels, axis, segmentation_node=segmentation_node, indices=indices
    )
    if reference is not None:
        return on_reference_grid(clear, reference), on_reference_grid(add, reference)
    return clear, add


def segment_region(segmentation_node, segment_id: str, region) -> np.ndarray:
    """The segment's voxels (bool, (K, J, I)) on the grid and extent of ``region``, a vtkOrientedImageData in
    the segmentation's coordinates (e.g. a modifier image); reads only that part of the segment."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(
            f"segment {segment_id!r} does not exist in {node_label(segmentation_node)}"
        )
    extent = region.GetExtent()
    shape = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in (2, 1, 0))
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    layer = segment.GetRepresentation(name)
    if layer is None or layer.IsEmpty():
        return np.zeros(shape, bool)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        layer, region, resampled
    ):
        raise OutputError(f"segment {segment_id!r} cannot be read")
    voxels = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    return voxels == segment.GetLabelValue()


def _scene(node):
    scene = node.GetScene() if node is not None else None
    if scene is None:
        raise InputError(f"{node_label(node)} is not in a MRML scene")
    return scene


def _ids(segment_id: str):
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    return ids


def _node_ids(scene) -> list[str]:
    nodes = scene.GetNodesByClass("vtkMRMLNode")
    return [nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())]


@contextmanager
def _temporary_nodes(scene) -> Iterator[None]:
    """Remove, when the block ends (also on an error), every node added to ``scene`` inside it.

    The temporary labelmap nodes of the segment exports and imports come with a display node and a colour
    table node that Slicer creates for them; without this each call would leave those in the scene.
    """
    before = set(_node_ids(scene))
    try:
        yield
    finally:
        for node_id in reversed([i for i in _node_ids(scene) if i not in before]):
            node = scene.GetNodeByID(node_id)
            if node is not None:  # removing one node may have removed others with it
                scene.RemoveNode(node)


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """One segment as a (Z, Y, X) uint8 0/1 array on the volume's grid (a copy); the scene is left as it
    was (no temporary nodes remain)."""
    scene = _scene(segmentation_node)
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(
            f"segment {segment_id!r} does not exist in {node_label(segmentation_node)}"
        )
    with _temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MiniSAM_export__")
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node,
            _ids(segment_id),
            labelmap,
            volume_node,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
        )
        if not ok:
            raise OutputError(f"segment {segment_id!r} cannot be exported from the segmentation")
        return (slicer.util.arrayFromVolume(labelmap) != 0).astype(np.uint8)


def _ensure_segment(segmentation_node, segment_id: str | None, volume_node) -> str:
    segmentation = segmentation_node.GetSegmentation()
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    if not segmentation.GetConversionParameter(parameter):
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if segment_id:
        if segmentation.GetSegment(segment_id) is None:
            raise InputError(
                f"segment {segment_id!r} does not exist in {node_label(segmentation_node)}"
            )
        return segment_id
    new_id = segmentation.AddEmptySegment("", DEFAULT_SEGMENT_NAME)
    if not new_id:
        raise OutputError(
            "a segment cannot be created: register vtkSlicerSegmentationsModuleLogic on the scene first"
        )
    return new_id


def _combined(existing, labels, axis, index, mode, indices) -> np.ndarray:
    labels = np.asarray(labels) != 0
    if labels.ndim == 2:
        if axis is None or index is None:
            raise InputError("a 2D mask needs its slice axis and index")
        full = np.zeros(existing.shape, dtype=bool)
        plane = np.moveaxis(full, axis, 0)
        if labels.shape != plane.shape[1:] or not 0 <= index < plane.shape[0]:
            raise InputError(
                f"a slice mask of shape {labels.shape} at slice {index} does not fit the volume "
                f"{existing.shape} along axis {axis}"
            )
        plane[index] = labels
        indices, labels = [index], full
    if mode == "replace":
        return labels.astype(np.uint8)
    if mode == "union":
        return (existing.astype(bool) | labels).astype(np.uint8)
    if axis is None:
        raise InputError("mode 'replace_slice' needs the slice axis")
    if indices is None:
        indices = np.flatnonzero(np.moveaxis(labels, axis, 0).any(axis=(1, 2)))
    out = existing.copy()
    np.moveaxis(out, axis, 0)[list(indices)] = np.moveaxis(labels, axis, 0)[list(indices)]
    return out


def write_mask_to_segment(
    segmentation_node,
    segment_id: str | None,
    volume_node,
    labels: np.ndarray,
    axis: int | None = None,
    index: int | None = None,
    mode: str = "replace_slice",
    indices: Iterable[int] | None = None,
) -> str:
    """Write a mask into one segment without touching the others; returns the segment's ID.

    Arguments:
      segmentation_node: target vtkMRMLSegmentationNode (its reference geometry is set from the volume
        when it has none).
      segment_id: the segment to modify; empty or None creates a segment named "MiniSAM".
      volume_node: the grid the labels are on.
      labels: a (Z, Y, X) label volume or a 2D slice mask (then ``axis`` and ``index`` say where).
      mode: "replace_slice" replaces the slices the mask covers (a 2D mask's slice; for 3D labels the
        ``indices`` given, else the slices with foreground along ``axis``); "union" adds; "replace" makes
        the segment equal to the labels.
    """
    if mode not in MODES:
        raise InputError(f"unknown write mode {mode!r}; expected one of {', '.join(MODES)}")
    scene = _scene(segmentation_node)
    segment_id = _ensure_segment(segmentation_node, segment_id, volume_node)
    shape = volume_arrays(volume_node).array.shape
    existing = (
        np.zeros(shape, np.uint8)
        if mode == "replace"
        else segment_array(segmentation_node, segment_id, volume_node)
    )
    combined = _combined(existing, labels, axis, index, mode, indices)
    with _temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MiniSAM_import__")
        labelmap.SetIJKToRASMatrix(
            slicer.util.vtkMatrixFromArray(volume_arrays(volume_node).ijk_to_ras)
        )
        labelmap.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        slicer.util.updateVolumeFromArray(labelmap, combined)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmap, segmentation_node, _ids(segment_id)
        ):
            raise OutputError(f"the mask cannot be written into segment {segment_id!r}")
    return segment_id


def write_segmentation(segmentation_node, path: str | os.PathLike[str]) -> Path:
    """Write a ``.seg.nrrd`` through the segmentation storage node, atomically
    (:func:`minisam.atomic.atomic_output`: an existing file stays as it was unless the new one is
    complete, and a failed write leaves no temporary file).

    Raises:
      OutputError: not a ``.seg.nrrd`` path, or the file cannot be written (one line).
    """
    target = Path(path)
    if not target.name.lower().endswith(".seg.nrrd"):
        raise OutputError(f"segmentation output {target} must end with .seg.nrrd")
    scene = _scene(segmentation_node)
    storage = segmentation_node.GetStorageNode()
    if storage is None:
        storage = segmentation_node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        segmentation_node.SetAndObserveStorageNodeID(storage.GetID())
    previous = storage.GetFileName()
    try:
        with atomic_output(target) as temporary:
            storage.SetFileName(str(temporary))
            if not storage.WriteData(segmentation_node) or temporary.stat().st_size == 0:
                raise OutputError(f"the segmentation cannot be written to {target}")
    except OSError as exc:
        storage.SetFileName(previous)
        raise OutputError(
            f"the segmentation cannot be written to {target} ({exc.strerror or exc})"
        ) from None
    except BaseException:
        storage.SetFileName(previous)
        raise
    storage.SetFileName(str(target))
    return target
