"""A scalar volume node as numpy: voxels (Z, Y, X), IJK <-> RAS matrices, DICOM modality. No Qt.

Conventions: ``slicer.util.arrayFromVolume`` gives (K, J, I) = (Z, Y, X), so IJK axis ``a`` is array axis
``2 - a``. Matrices are node-local RAS (before any parent transform); :func:`world_to_local` adds the parent
transform for points given in world RAS (what slice views and markups report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk

from minisam.errors import InputError

__all__ = [
    "VolumeArrays",
    "dicom_modality",
    "geometry_image",
    "normalization_modality",
    "volume_arrays",
    "world_to_local",
]

DICOM_MODALITY_ATTRIBUTE = "DICOM.Modality"
"""Attribute name Slicer's DICOM import puts on series items (vtkMRMLSubjectHierarchyConstants)."""


@dataclass(frozen=True)
class VolumeArrays:
    """Voxels and geometry of one volume node.

    Attributes:
      array: (Z, Y, X) numpy VIEW of the node's voxels (do not write into it).
      ijk_to_ras: 4x4 float64, node-local RAS.
      ras_to_ijk: its inverse.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    ras_to_ijk: np.ndarray


def node_label(node) -> str:
    """The node's name for messages ('volume' when it has none)."""
    name = node.GetName() if node is not None else None
    return f"'{name}'" if name else "the volume"


def volume_arrays(volume_node) -> VolumeArrays:
    """Voxels (Z, Y, X) and IJK <-> RAS matrices of a scalar volume node.

    Raises:
      InputError: no node, no image data, or more than one component per voxel.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError(f"{node_label(volume_node)} has no image data: load or select a volume")
    array = slicer.util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise InputError(
            f"volume {node_label(volume_node)} has {array.shape[-1]} components per voxel; "
            "MiniSAM needs a scalar (grey) volume"
        )
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    return VolumeArrays(
        array=array,
        ijk_to_ras=slicer.util.arrayFromVTKMatrix(ijk_to_ras),
        ras_to_ijk=slicer.util.arrayFromVTKMatrix(ras_to_ijk),
    )


def world_to_local(node) -> np.ndarray:
    """4x4 matrix from world RAS to the node's local RAS (identity without a parent transform).

    Raises:
      InputError: the parent transform is not linear.
    """
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(
            f"{node_label(node)} is under a non-linear transform: harden the transform first"
        )
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformFromWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def geometry_image(volume_node):
    """A vtkOrientedImageData with the volume's extent and IJK-to-RAS but no voxels.

    The Segment Editor helpers (``xyToIjk``) only read an image's geometry, so this is the cheap way to ask
    them for indices of the source volume itself rather than of the segmentation's geometry.
    """
    image = slicer.vtkOrientedImageData()
    image.SetExtent(volume_node.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def _subject_hierarchy_modality(node) -> str | None:
    """'DICOM.Modality' of the node's subject-hierarchy item or of its nearest ancestor (series, study)."""
    scene = node.GetScene()
    if scene is None:
        return None
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return None
    item = hierarchy.GetItemByDataNode(node)
    root = hierarchy.GetSceneItemID()
    while item and item != root:
        value = hierarchy.GetItemAttribute(item, DICOM_MODALITY_ATTRIBUTE)
        if value:
            return value
        item = hierarchy.GetItemParent(item)
    return None


def _dicom_database_modality(node) -> str | None:
    """Modality tag (0008,0060) of the node's first DICOM instance, when Slicer's DICOM database is open."""
    database = getattr(slicer, "dicomDatabase", None)
    uids = node.GetAttribute("DICOM.instanceUIDs")
    if database is None or not uids:
        return None
    path = database.fileForInstance(uids.split()[0])
    return database.fileValue(path, "0008,0060") if path else None


def dicom_modality(volume_node) -> str | None:
    """Best-effort DICOM modality ("CT", "MR", "US", ...) of a volume node, or None if unknown.

    Looked up, in order: the node attribute 'DICOM.Modality', the subject-hierarchy item attribute of the node
    or its series/study, and the DICOM database entry of its first instance (inside the Slicer application).
    """
    for lookup in (
        lambda n: n.GetAttribute(DICOM_MODALITY_ATTRIBUTE),
        _subject_hierarchy_modality,
        _dicom_database_modality,
    ):
        value = lookup(volume_node)
        if value and value.strip():
            return value.strip().upper()
    return None


def normalization_modality(volume_node, choice: str = "auto") -> str:
    """The normalisation preset (:func:`minisam.intensity.normalize_intensity`) for a volume node.

    Arguments:
      volume_node: the source volume.
      choice: an explicit preset ("ct", "ct-lung", "mr", ...) is returned checked; "auto" uses the DICOM
        modality when known and otherwise the core's intensity-range guess (CT when the values span air and
        bone in HU), as ``minisam segment --modality auto`` does for a volume file.

    Raises:
      InputError: ``choice`` is not a preset.
    """
    from minisam.intensity import guess_preset_of
    from minisam.modality import AUTO, check_preset

    preset = check_preset(choice)
    if preset != AUTO:
        return preset
    array = volume_arrays(volume_node).array
    return guess_preset_of(array, dicom_code=dicom_modality(volume_node), is_volume=True)
