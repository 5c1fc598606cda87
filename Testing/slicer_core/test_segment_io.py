"""Masks into segments: headless writes, the effect's modifier images, .seg.nrrd output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk
from MiniSAMSegmentLib.segment_io import (
    labelmap_oriented_image,
    replace_modifiers,
    segment_array,
    write_mask_to_segment,
    write_segmentation,
)

from minisam.errors import InputError, OutputError

SHAPE = (30, 101, 122)


@pytest.fixture()
def segmentation(context, ct_volume):
    """A segmentation on the CT's grid holding an 'other' segment (a block across slices 20..27)."""
    node = context.new_segmentation(ct_volume)
    other = np.zeros(SHAPE, np.uint8)
    other[20:28, 20:60, 20:60] = 1
    node.other_id = write_mask_to_segment(node, "", ct_volume, other, mode="replace")
    node.GetSegmentation().GetSegment(node.other_id).SetName("other")
    node.other = other
    return node


def _slice_mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(SHAPE[1:], bool)
    mask[rows, cols] = True
    return mask


def test_write_slice_replaces_only_that_slice_of_that_segment(segmentation, ct_volume) -> None:
    seg_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    before = np.zeros(SHAPE, np.uint8)
    before[23:26, 40:80, 40:100] = 1
    write_mask_to_segment(segmentation, seg_id, ct_volume, before, mode="replace")
    mask = _slice_mask(slice(10, 30), slice(10, 30))  # overlaps 'other' on slice 24
    write_mask_to_segment(segmentation, seg_id, ct_volume, mask, axis=0, index=24)
    expected = before.copy()
    expected[24] = mask
    np.testing.assert_array_equal(segment_array(segmentation, seg_id, ct_volume), expected)
    np.testing.assert_array_equal(
        segment_array(segmentation, segmentation.other_id, ct_volume), segmentation.other
    )


def test_union_replace_and_3d_slices(segmentation, ct_volume) -> None:
    coronal_mask = np.zeros((SHAPE[0], SHAPE[2]), bool)  # a coronal slice is (Z, X)
    coronal_mask[0:5, 0:5] = True
    seg_id = write_mask_to_segment(segmentation, "", ct_volume, coronal_mask, axis=1, index=3)
    assert seg_id != segmentation.other_id
    coronal = np.zeros(SHAPE, np.uint8)
    coronal[0:5, 3, 0:5] = 1
    np.testing.assert_array_equal(segment_array(segmentation, seg_id, ct_volume), coronal)
    extra = np.zeros(SHAPE, np.uint8)
    extra[10, 50, 50] = 1
    write_mask_to_segment(segmentation, seg_id, ct_volume, extra, mode="union")
    np.testing.assert_array_equal(segment_array(segmentation, seg_id, ct_volume), coronal | extra)
    # 3D replace_slice: only slices 9..11 along axis 0 change; slice 0..4 of the coronal block stays.
    block = np.zeros(SHAPE, np.uint8)
    block[9:12, 60:70, 60:70] = 1
    write_mask_to_segment(segmentation, seg_id, ct_volume, block, axis=0, indices=[9, 10, 11])
    np.testing.assert_array_equal(segment_array(segmentation, seg_id, ct_volume), coronal | block)
    write_mask_to_segment(
        segmentation, seg_id, ct_volume, np.zeros(SHAPE, np.uint8), mode="replace"
    )
    assert segment_array(segmentation, seg_id, ct_volume).sum() == 0
    with pytest.raises(InputError, match="does not fit"):
        write_mask_to_segment(segmentation, seg_id, ct_volume, coronal_mask, axis=0, index=3)
    with pytest.raises(InputError, match="unknown write mode"):
        write_mask_to_segment(segmentation, seg_id, ct_volume, block, mode="merge")
    with pytest.raises(InputError, match="does not exist"):
        write_mask_to_segment(segmentation, "nope", ct_volume, block, mode="union")


def test_replace_modifiers_through_the_segment_editor_logic(
    context, segmentation, ct_volume
) -> None:
    """The images the effect passes to modifySelectedSegmentByLabelmap, applied by the same C++ logic."""
    seg_id = segmentation.GetSegmentation().AddEmptySegment("", "edited")
    before = np.zeros(SHAPE, np.uint8)
    before[23:26, 40:80, 40:100] = 1
    write_mask_to_segment(segmentation, seg_id, ct_volume, before, mode="replace")
    editor_node = context.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetAndObserveSegmentationNode(segmentation)
    editor_node.SetAndObserveSourceVolumeNode(ct_volume)
    editor_node.SetSelectedSegmentID(seg_id)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetSegmentEditorNode(editor_node)
    mask = _slice_mask(slice(10, 30), slice(10, 30))
    clear, add = replace_modifiers(ct_volume, mask, 0, [24], segmentation)
    assert clear.GetExtent() == add.GetExtent() == (0, 121, 0, 100, 24, 24)
    no_extent = (0, -1, 0, -1, 0, -1)
    for image, mode in ((clear, editor.ModificationModeRemove), (add, editor.ModificationModeAdd)):
        editor.ModifySegmentByLabelmap(segmentation, seg_id, image, mode, no_extent, True, True)
    expected = before.copy()
    expected[24] = mask
    np.testing.assert_array_equal(segment_array(segmentation, seg_id, ct_volume), expected)
    np.testing.assert_array_equal(
        segment_array(segmentation, segmentation.other_id, ct_volume), segmentation.other
    )
    # Propagation's 3D result: only the listed slices change (slice 29's stray voxels are not added).
    labels = np.zeros(SHAPE, np.uint8)
    labels[23:25, 0:5, 0:5] = 1
    labels[29, 50, 50] = 1
    clear, add = replace_modifiers(ct_volume, labels, 0, [24, 23], segmentation)
    assert clear.GetExtent() == add.GetExtent() == (0, 121, 0, 100, 23, 24)
    for image, mode in ((clear, editor.ModificationModeRemove), (add, editor.ModificationModeAdd)):
        editor.ModifySegmentByLabelmap(segmentation, seg_id, image, mode, no_extent, True, True)
    expected[23:25] = labels[23:25]
    np.testing.assert_array_equal(segment_array(segmentation, seg_id, ct_volume), expected)


def test_oriented_image_follows_the_segmentation_transform(
    context, segmentation, ct_volume
) -> None:
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(2, 3, 12.0)
    transform.SetMatrixTransformToParent(shift)
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    image = labelmap_oriented_image(
        ct_volume, _slice_mask(slice(0, 2), slice(0, 2)), 0, 7, segmentation
    )
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    volume_matrix = vtk.vtkMatrix4x4()
    ct_volume.GetIJKToRASMatrix(volume_matrix)
    assert matrix.GetElement(2, 3) == pytest.approx(volume_matrix.GetElement(2, 3) - 12.0)
    assert image.GetExtent() == (0, 121, 0, 100, 7, 7)
    with pytest.raises(InputError, match="slice axis and index"):
        labelmap_oriented_image(ct_volume, np.ones(SHAPE[1:]))


def test_write_segmentation_round_trip(context, segmentation, ct_volume, tmp_path: Path) -> None:
    out = tmp_path / "out.seg.nrrd"
    write_segmentation(segmentation, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]
    loaded = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    context.scene.AddNode(storage)
    storage.SetFileName(str(out))
    assert storage.ReadData(loaded)
    seg_id = loaded.GetSegmentation().GetSegmentIdBySegmentName("other")
    np.testing.assert_array_equal(segment_array(loaded, seg_id, ct_volume), segmentation.other)
    with pytest.raises(OutputError, match=r"\.seg\.nrrd"):
        write_segmentation(segmentation, tmp_path / "out.nrrd")


def test_write_segmentation_is_all_or_nothing(
    segmentation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure at the final rename (a full disk) leaves the existing file as it was and no temporary,
    through minisam.atomic's one implementation; the error is one line."""
    import os

    out = tmp_path / "out.seg.nrrd"
    out.write_bytes(b"the user's earlier segmentation")
    real_replace = os.replace

    def full_disk(source, destination) -> None:
        if Path(destination) == out and ".tmp-" in Path(source).name:
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr("minisam.atomic.os.replace", full_disk)
    with pytest.raises(OutputError) as err:
        write_segmentation(segmentation, out)
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]
    assert out.read_bytes() == b"the user's earlier segmentation"


def test_reads_and_writes_leave_no_nodes_behind(context, segmentation, ct_volume) -> None:
    """Each export / import goes through a temporary labelmap node, whose display and colour table nodes
    must go with it (MiniSAMTrain reads segments many times)."""
    scene = context.scene
    before = scene.GetNodesByClass("vtkMRMLNode").GetNumberOfItems()
    for _ in range(3):
        segment_array(segmentation, segmentation.other_id, ct_volume)
    assert scene.GetNodesByClass("vtkMRMLNode").GetNumberOfItems() == before
    mask = _slice_mask(slice(10, 30), slice(10, 30))
    seg_id = write_mask_to_segment(segmentation, "", ct_volume, mask, axis=0, index=24)
    write_mask_to_segment(segmentation, seg_id, ct_volume, mask, axis=0, index=5, mode="union")
    write_mask_to_segment(segmentation, seg_id, ct_volume, np.zeros(SHAPE), mode="replace")
    assert scene.GetNodesByClass("vtkMRMLNode").GetNumberOfItems() == before
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    with pytest.raises(InputError):
        segment_array(segmentation, "no such segment", ct_volume)
    assert scene.GetNodesByClass("vtkMRMLNode").GetNumberOfItems() == before
