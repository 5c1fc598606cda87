"""Slicer's real Segment Editor logic in plain Python, shaped as the ``SegmentEditor`` the MiniSAM logic
writes through (in Slicer the effect's ``EffectEditor`` wraps ``scriptedEffect`` the same way)."""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from MiniSAMSegmentLib.volume_node import volume_arrays
from vtk.util import numpy_support

NO_EXTENT = (0, -1, 0, -1, 0, -1)


class LogicEditor:
    """``vtkSlicerSegmentEditorLogic`` on a new vtkMRMLSegmentEditorNode for one segmentation and volume."""

    def __init__(self, scene, segmentation_node, volume_node, segment_id: str) -> None:
        self.node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.node.SetAndObserveSegmentationNode(segmentation_node)
        self.node.SetAndObserveSourceVolumeNode(volume_node)
        self.node.SetSelectedSegmentID(segment_id)
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(self.node)
        self.segmentation_node = segmentation_node

    def reference_geometry(self):
        # what qSlicerSegmentEditorAbstractEffect::defaultModifierLabelmap() returns
        self.logic.ResetModifierLabelmapToDefault()
        return self.logic.GetModifierLabelmap()

    def save_state_for_undo(self) -> None:
        self.logic.SaveStateForUndo()

    def modify_selected_segment(self, modifier, remove: bool) -> None:
        mode = self.logic.ModificationModeRemove if remove else self.logic.ModificationModeAdd
        segment_id = self.node.GetSelectedSegmentID()
        self.logic.ModifySegmentByLabelmap(
            self.segmentation_node, segment_id, modifier, mode, NO_EXTENT, True, False
        )


def oversample_geometry(segmentation_node, volume_node, factor: int = 2) -> None:
    """Give the segmentation the volume's grid with ``factor`` times finer voxels over the same box (as
    Segmentations > Specify geometry with an oversampling factor does)."""
    scale = np.diag([1.0 / factor] * 3 + [1.0])
    scale[:3, 3] = (1.0 / factor - 1.0) / 2  # fine voxel centres inside the coarse voxels
    extent = volume_node.GetImageData().GetExtent()
    fine = slicer.vtkOrientedImageData()
    fine.SetExtent(*[(e + 1) * factor - 1 if a % 2 else e * factor for a, e in enumerate(extent)])
    fine.SetImageToWorldMatrix(
        slicer.util.vtkMatrixFromArray(volume_arrays(volume_node).ijk_to_ras @ scale)
    )
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(fine)
    segmentation_node.GetSegmentation().SetConversionParameter(name, geometry)


def upsample(labels: np.ndarray, factor: int = 2) -> np.ndarray:
    """Coarse (K, J, I) labels on the oversampled grid of :func:`oversample_geometry` (nearest neighbour)."""
    for axis in range(3):
        labels = np.repeat(labels, factor, axis=axis)
    return labels


def fill(editor: LogicEditor, segment_id: str, voxels: np.ndarray) -> None:
    """Add ``voxels`` (bool, on the editor's reference grid) to a segment through the editor."""
    modifier = editor.reference_geometry()
    numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars())[:] = voxels.reshape(-1)
    modifier.Modified()
    editor.node.SetSelectedSegmentID(segment_id)
    editor.modify_selected_segment(modifier, remove=False)


def geometry_copy(image):
    """A vtkOrientedImageData with the extent and IJK-to-RAS of ``image`` (no voxels)."""
    copy = slicer.vtkOrientedImageData()
    copy.SetExtent(image.GetExtent())
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    copy.SetImageToWorldMatrix(matrix)
    return copy
