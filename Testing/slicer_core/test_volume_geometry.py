"""Volume node -> numpy and RAS <-> IJK <-> slice prompt, on the real example CT loaded by Slicer's logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from MiniSAMSegmentLib.slice_geometry import (
    ijk_to_slice_prompt,
    ras_to_ijk,
    ras_to_slice_prompt,
    slice_axis,
)
from MiniSAMSegmentLib.volume_node import (
    dicom_modality,
    geometry_image,
    normalization_modality,
    volume_arrays,
)
from slicer_cases import CT, LIVER_BOX, LIVER_SLICE

from minisam.errors import InputError, PromptError

VOXELS = np.array([[0, 0, 0], [121, 100, 29], [44, 27, 24], [104, 81, 24], [7, 93, 3]])


def _sitk_ras(image: sitk.Image, ijk) -> np.ndarray:
    lps = np.asarray(image.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
    return lps * np.array([-1.0, -1.0, 1.0])


def test_volume_arrays_match_simpleitk(ct_volume, shared_data: Path) -> None:
    image = sitk.ReadImage(str(shared_data / CT))
    arrays = volume_arrays(ct_volume)
    expected = sitk.GetArrayFromImage(image)
    assert arrays.array.shape == expected.shape == (30, 101, 122)
    np.testing.assert_array_equal(arrays.array, expected)
    for ijk in VOXELS:  # Slicer's IJK-to-RAS is ITK's index-to-LPS with x and y negated
        ras = arrays.ijk_to_ras @ np.r_[ijk, 1.0]
        np.testing.assert_allclose(ras[:3], _sitk_ras(image, ijk), atol=1e-4)
    # LPS direction diag(-1, -1, 1) is RAS identity: i runs to the patient's left... in RAS +x
    np.testing.assert_allclose(np.diag(arrays.ijk_to_ras)[:3], [3.0, 3.0, 3.0], atol=1e-6)
    np.testing.assert_allclose(arrays.ras_to_ijk @ arrays.ijk_to_ras, np.eye(4), atol=1e-9)


def test_ras_of_a_voxel_maps_back_to_it(ct_volume, shared_data: Path) -> None:
    image = sitk.ReadImage(str(shared_data / CT))
    ras = np.array([_sitk_ras(image, ijk) for ijk in VOXELS])
    np.testing.assert_allclose(ras_to_ijk(ct_volume, ras), VOXELS, atol=1e-4)
    # A point given in LPS by mistake lands elsewhere: the sign handling matters.
    lps = ras * np.array([-1.0, -1.0, 1.0])
    assert not np.allclose(ras_to_ijk(ct_volume, lps[2:3]), VOXELS[2:3], atol=1.0)


def test_world_points_go_through_the_parent_transform(context, ct_volume) -> None:
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 30.0)  # 30 mm = 10 voxels along R
    transform.SetMatrixTransformToParent(shift)
    ct_volume.SetAndObserveTransformNodeID(transform.GetID())
    local = volume_arrays(ct_volume).ijk_to_ras @ np.array([10.0, 20.0, 5.0, 1.0])
    np.testing.assert_allclose(
        ras_to_ijk(ct_volume, [local[:3]], world=False), [[10, 20, 5]], atol=1e-9
    )
    np.testing.assert_allclose(
        ras_to_ijk(ct_volume, [local[:3]], world=True), [[0, 20, 5]], atol=1e-9
    )


def test_geometry_image_maps_ras_to_the_volume_voxels(ct_volume) -> None:
    image = geometry_image(ct_volume)
    world_to_image = vtk.vtkMatrix4x4()
    image.GetWorldToImageMatrix(world_to_image)
    ras = volume_arrays(ct_volume).ijk_to_ras @ np.array([44.0, 27.0, 24.0, 1.0])
    np.testing.assert_allclose(world_to_image.MultiplyPoint(list(ras))[:3], [44, 27, 24], atol=1e-6)
    assert image.GetExtent() == (0, 121, 0, 100, 0, 29)


def test_slice_axis_from_views_normals_and_axes(context, ct_volume) -> None:
    assert [slice_axis(ct_volume, v) for v in ("axial", "coronal", "sagittal")] == [0, 1, 2]
    assert slice_axis(ct_volume, [0.0, 0.0, -1.0]) == 0  # a flipped normal is the same plane
    assert slice_axis(ct_volume, [1.0, 0.0, 0.0]) == 2
    assert slice_axis(ct_volume, "1") == 1
    with pytest.raises(PromptError, match="oblique"):
        slice_axis(ct_volume, [1.0, 1.0, 0.0])
    with pytest.raises(PromptError, match="unknown view"):
        slice_axis(ct_volume, "transverse")
    # A volume stored sagittally (i along S): an axial view slices numpy axis 2.
    node = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    node.SetIJKToRASMatrix(
        slicer.util.vtkMatrixFromArray(
            np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
        )
    )
    slicer.util.updateVolumeFromArray(node, np.zeros((4, 5, 6), np.int16))
    assert slice_axis(node, "axial") == 2 and slice_axis(node, [0, 0, 1]) == 2


def test_ijk_to_slice_prompt_maps_pixels_per_axis() -> None:
    shape = (30, 101, 122)
    axial = ijk_to_slice_prompt(shape, 0, positive_ijk=[[10, 20, 5]])
    coronal = ijk_to_slice_prompt(shape, 1, positive_ijk=[[10, 20, 5]])
    sagittal = ijk_to_slice_prompt(shape, 2, negative_ijk=[[10, 20, 5]])
    assert (axial.index, axial.prompt.points.tolist()) == (5, [[10, 20]])
    assert (coronal.index, coronal.prompt.points.tolist()) == (20, [[10, 5]])
    assert (sagittal.index, sagittal.prompt.points.tolist()) == (10, [[20, 5]])
    assert sagittal.prompt.labels.tolist() == [0]
    boxed = ijk_to_slice_prompt(shape, 0, box_ijk=[[-7.4, 90, 24.2], [60.6, 140, 23.8]])
    assert boxed.index == 24 and boxed.prompt.box.tolist() == [
        0,
        90,
        61,
        100,
    ]  # clipped to the slice
    with pytest.raises(PromptError, match="outside"):
        ijk_to_slice_prompt(shape, 0, positive_ijk=[[130, 20, 5]])
    with pytest.raises(PromptError, match="outside slice"):
        ijk_to_slice_prompt(shape, 0, box_ijk=[[130, 0, 3], [150, 9, 3]])
    with pytest.raises(PromptError, match="slice 31"):
        ijk_to_slice_prompt(shape, 0, positive_ijk=[[1, 1, 31]])
    with pytest.raises(PromptError, match="no prompt"):
        ijk_to_slice_prompt(shape, 0)


def test_ras_box_and_roi_give_the_liver_slice_prompt(context, ct_volume) -> None:
    ijk_to_ras = volume_arrays(ct_volume).ijk_to_ras
    i0, j0, i1, j1 = LIVER_BOX
    corners = [(ijk_to_ras @ [i, j, LIVER_SLICE, 1.0])[:3] for i, j in ((i0, j0), (i1, j1))]
    from_corners = ras_to_slice_prompt(ct_volume, "axial", box=corners)
    assert (from_corners.axis, from_corners.index) == (0, LIVER_SLICE)
    assert from_corners.prompt.box.tolist() == list(map(float, LIVER_BOX))

    roi = context.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    center = (np.asarray(corners[0]) + np.asarray(corners[1])) / 2
    size = np.abs(np.asarray(corners[1]) - np.asarray(corners[0])) + [0.0, 0.0, 6.0]
    roi.SetCenter(*center)
    roi.SetSize(*size)
    from_roi = ras_to_slice_prompt(ct_volume, [0.0, 0.0, 1.0], box=roi, positive_ras=[center])
    assert from_roi.index == LIVER_SLICE
    assert from_roi.prompt.box.tolist() == list(map(float, LIVER_BOX))
    assert from_roi.prompt.points.tolist() == [[(i0 + i1) / 2, (j0 + j1) / 2]]


def test_dicom_modality_from_attribute_and_subject_hierarchy(context, ct_volume) -> None:
    assert dicom_modality(ct_volume) is None
    assert normalization_modality(ct_volume) == "ct"  # guessed from the HU range
    assert normalization_modality(ct_volume, "mr") == "mr"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(context.scene)
    study = hierarchy.CreateStudyItem(hierarchy.GetSceneItemID(), "study")
    hierarchy.SetItemAttribute(study, "DICOM.Modality", "MR")
    hierarchy.CreateItem(study, ct_volume)
    assert dicom_modality(ct_volume) == "MR"
    assert normalization_modality(ct_volume) == "mr"
    ct_volume.SetAttribute("DICOM.Modality", " us ")
    assert dicom_modality(ct_volume) == "US"


def test_volume_arrays_reject_missing_image_data(context) -> None:
    empty = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="'empty' has no image data"):
        volume_arrays(empty)
