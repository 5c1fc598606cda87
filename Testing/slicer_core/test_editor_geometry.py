"""The effect's writes through Slicer's real Segment Editor logic when the segmentation's geometry is not the
source volume's grid (issue 16): masking, overwrite and undo must hold as they do for Slicer's own effects."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from editor_cases import LogicEditor, fill, geometry_copy, oversample_geometry, upsample
from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic
from MiniSAMSegmentLib.segment_io import segment_array, segment_region

SHAPE = (30, 101, 122)  # the example CT (K, J, I), 3 mm
SLICE = 24
EVERYWHERE = slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
INSIDE_ONE = slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE[1:], bool)
    mask[10:50, 10:50] = True  # overlaps 'other' (coarse rows and columns 20..59)
    return mask


def _on_slice(mask: np.ndarray) -> np.ndarray:
    labels = np.zeros(SHAPE, bool)
    labels[SLICE] = mask
    return labels


@pytest.fixture()
def fine(context, ct_volume):
    """A segmentation oversampled x2 (1.5 mm) with 'other' (overlapping the mask on slice 24) and 'target'
    (content on slices 23..25), both written on the fine grid through the editor."""
    segmentation = context.new_segmentation(ct_volume)
    oversample_geometry(segmentation, ct_volume)
    segments = segmentation.GetSegmentation()
    other_id = segments.AddEmptySegment("", "other")
    target_id = segments.AddEmptySegment("", "target")
    editor = LogicEditor(context.scene, segmentation, ct_volume, target_id)
    grid = geometry_copy(editor.reference_geometry())
    assert grid.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))
    other = np.zeros(grid.GetDimensions()[::-1], bool)
    other[40:56, 40:120, 40:120] = True
    target = np.zeros_like(other)
    target[46:52, 150:170, 150:170] = True  # coarse slices 23..25
    fill(editor, other_id, other)
    fill(editor, target_id, target)
    editor.node.SetOverwriteMode(editor.node.OverwriteNone)
    return segmentation, editor, grid, (other_id, other), (target_id, target)


MODES = {
    "no masking": {},
    "intensity range": {"intensity": (-5000.0, 5000.0)},  # every voxel in range: all of the mask
    "inside other segment": {"inside_other": True},
    "overwrite all": {"overwrite_all": True},
}


@pytest.mark.parametrize("mode", MODES)
def test_slice_write_on_an_oversampled_segmentation(fine, ct_volume, mode: str) -> None:
    segmentation, editor, grid, (other_id, other), (target_id, target) = fine
    settings = MODES[mode]
    if "intensity" in settings:
        editor.node.SetSourceVolumeIntensityMask(True)
        editor.node.SetSourceVolumeIntensityMaskRange(*settings["intensity"])
    if settings.get("inside_other"):
        editor.node.SetMaskMode(INSIDE_ONE)
        editor.node.SetMaskSegmentID(other_id)
    if settings.get("overwrite_all"):
        editor.node.SetOverwriteMode(editor.node.OverwriteAllSegments)
    logic = MiniSAMSegmentLogic("random:tiny", device="cpu")  # writes need no model

    logic.write_slices(editor, ct_volume, segmentation, target_id, _on_slice(_mask()), 0, [SLICE])

    written = upsample(_on_slice(_mask()))
    if settings.get("inside_other"):
        written &= other
    replaced = upsample(_on_slice(np.ones(SHAPE[1:], bool)))  # the two fine slices of slice 24
    expected = np.where(replaced, written, target)
    np.testing.assert_array_equal(segment_region(segmentation, target_id, grid), expected)
    expected_other = other & ~written if settings.get("overwrite_all") else other
    if settings.get("inside_other"):
        # as for Erase: what leaves the selected segment inside a single-segment editable area goes to
        # that segment (Slicer's way to split a segment)
        expected_other = other | (target & replaced)
    np.testing.assert_array_equal(segment_region(segmentation, other_id, grid), expected_other)
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for segment_id in (other_id, target_id):  # no layer resampled to the volume's 3 mm
        layer = segmentation.GetSegmentation().GetSegment(segment_id).GetRepresentation(name)
        assert layer.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))

    editor.logic.Undo()
    np.testing.assert_array_equal(segment_region(segmentation, target_id, grid), target)
    np.testing.assert_array_equal(segment_region(segmentation, other_id, grid), other)


def test_slice_write_on_a_transformed_segmentation(context, ct_volume) -> None:
    """The segmentation under a 6 mm shift: the mask lands where it is in the world, intensity mask on."""
    segmentation = context.new_segmentation(ct_volume)
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(2, 3, 6.0)
    transform.SetMatrixTransformToParent(shift)
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    target_id = segmentation.GetSegmentation().AddEmptySegment("", "target")
    editor = LogicEditor(context.scene, segmentation, ct_volume, target_id)
    editor.node.SetSourceVolumeIntensityMask(True)
    editor.node.SetSourceVolumeIntensityMaskRange(-5000.0, 5000.0)
    logic = MiniSAMSegmentLogic("random:tiny", device="cpu")
    logic.write_slices(editor, ct_volume, segmentation, target_id, _on_slice(_mask()), 0, [SLICE])
    np.testing.assert_array_equal(
        segment_array(segmentation, target_id, ct_volume), _on_slice(_mask())
    )


def test_slice_write_on_a_segmentation_made_on_another_volume(context, ct_volume) -> None:
    """The segmentation's geometry is another volume's: a series covering CT voxels I 20..89, J 5..64,
    K 20..29 (its own origin and extent). The mask is cut to that grid and written on it, intensity
    range on (the source volume resampled by the editor); a slice it does not cover is one line."""
    from minisam.errors import InputError

    other = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other series")
    image = vtk.vtkImageData()
    image.SetDimensions(70, 60, 10)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    other.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    ct_volume.GetIJKToRASMatrix(matrix)
    origin = np.array(matrix.MultiplyPoint((20, 5, 20, 1)))[:3]
    for row in range(3):
        matrix.SetElement(row, 3, origin[row])
    other.SetIJKToRASMatrix(matrix)
    segmentation = context.new_segmentation(other)
    target_id = segmentation.GetSegmentation().AddEmptySegment("", "target")
    editor = LogicEditor(context.scene, segmentation, ct_volume, target_id)
    editor.node.SetSourceVolumeIntensityMask(True)
    editor.node.SetSourceVolumeIntensityMaskRange(-5000.0, 5000.0)
    grid = geometry_copy(editor.reference_geometry())
    assert grid.GetExtent() == (0, 69, 0, 59, 0, 9)
    logic = MiniSAMSegmentLogic("random:tiny", device="cpu")

    logic.write_slices(editor, ct_volume, segmentation, target_id, _on_slice(_mask()), 0, [SLICE])

    expected = np.zeros((10, 60, 70), bool)
    expected[SLICE - 20, 10 - 5 : 50 - 5, 0 : 50 - 20] = True  # the mask's I 10..19 lie outside
    np.testing.assert_array_equal(segment_region(segmentation, target_id, grid), expected)
    layer = (
        segmentation.GetSegmentation()
        .GetSegment(target_id)
        .GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    )
    to_world = [vtk.vtkMatrix4x4() for _ in range(2)]
    layer.GetImageToWorldMatrix(to_world[0])
    grid.GetImageToWorldMatrix(to_world[1])
    np.testing.assert_allclose(  # the segment stays on the other volume's grid (origin included)
        *[slicer.util.arrayFromVTKMatrix(m) for m in to_world], atol=1e-6
    )
    with pytest.raises(InputError, match="lies outside the segmentation's geometry"):
        logic.write_slices(editor, ct_volume, segmentation, target_id, _on_slice(_mask()), 0, [5])
    editor.logic.Undo()
    assert not segment_region(segmentation, target_id, grid).any()
