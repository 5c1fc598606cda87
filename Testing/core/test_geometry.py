"""Index <-> physical transforms against SimpleITK itself, LPS/RAS, and view -> slice axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from minisam.errors import PromptError
from minisam.geometry import (
    index_to_physical,
    lps_to_ras,
    physical_to_index,
    ras_to_lps,
    slice_axis_for,
    slice_axis_from_direction,
)
from minisam.imageio import read_image


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit axis."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = np.deg2rad(degrees)
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def _volume(direction: np.ndarray, spacing=(0.7, 1.3, 2.5), origin=(-12.5, 40.25, 7.0)):
    image = sitk.Image(8, 7, 6, sitk.sitkInt16)
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


@pytest.fixture
def oblique() -> sitk.Image:
    # 30 degrees about a tilted axis: every direction entry is non-zero.
    return _volume(_rotation(np.array([1.0, 2.0, 3.0]), 30.0))


def test_index_to_physical_matches_sitk(oblique: sitk.Image) -> None:
    rng = np.random.default_rng(0)
    ijk = rng.uniform(-2, 9, (25, 3))
    ours = index_to_physical(oblique, ijk)
    theirs = np.array([oblique.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk])
    assert ours.shape == (25, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    # non-trivial: the rotation really moves points away from the axis-aligned answer
    naive = np.asarray(oblique.GetOrigin()) + ijk * np.asarray(oblique.GetSpacing())
    assert np.abs(ours - naive).max() > 1.0


def test_physical_to_index_matches_sitk_and_round_trips(oblique: sitk.Image) -> None:
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-30, 30, (25, 3))
    ours = physical_to_index(oblique, xyz)
    theirs = np.array([oblique.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in xyz])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(index_to_physical(oblique, ours), xyz, atol=1e-9)


def test_single_point_and_medical_image(tmp_path: Path, oblique: sitk.Image) -> None:
    sitk.WriteImage(oblique, str(tmp_path / "o.nrrd"))
    img = read_image(tmp_path / "o.nrrd")
    point = index_to_physical(img, (1.5, 2.0, 3.25))
    assert point.shape == (3,)
    expected = oblique.TransformContinuousIndexToPhysicalPoint((1.5, 2.0, 3.25))
    np.testing.assert_allclose(point, expected, atol=1e-6)
    np.testing.assert_allclose(physical_to_index(img, point), (1.5, 2.0, 3.25), atol=1e-6)


def test_2d_image_transforms() -> None:
    image = sitk.Image(5, 4, sitk.sitkUInt8)
    image.SetSpacing((0.5, 2.0))
    image.SetOrigin((10.0, -3.0))
    image.SetDirection((0.0, 1.0, 1.0, 0.0))
    np.testing.assert_allclose(
        index_to_physical(image, (2.0, 1.0)),
        image.TransformContinuousIndexToPhysicalPoint((2.0, 1.0)),
    )


def test_wrong_point_dimension(oblique: sitk.Image) -> None:
    with pytest.raises(PromptError, match="shape"):
        index_to_physical(oblique, (1.0, 2.0))
    with pytest.raises(PromptError, match="shape"):
        physical_to_index(oblique, np.zeros((2, 2, 3)))


def test_lps_ras() -> None:
    lps = np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    ras = lps_to_ras(lps)
    np.testing.assert_array_equal(ras, [[-1.0, 2.0, 3.0], [4.0, -5.0, -6.0]])
    np.testing.assert_array_equal(ras_to_lps(ras), lps)
    np.testing.assert_array_equal(lps_to_ras((1.0, 2.0, 3.0)), (-1.0, -2.0, 3.0))
    assert lps[0, 0] == 1.0  # inputs are not modified in place


def test_slice_axis_lps_axial_volume(shared_data: Path) -> None:
    identity = _volume(np.eye(3))
    assert slice_axis_for(identity, "axial") == 0
    assert slice_axis_for(identity, "coronal") == 1
    assert slice_axis_for(identity, "sagittal") == 2
    # a real axial NRRD with a flipped y axis (direction diag(1, -1, 1)) and a NIfTI with flips
    brain = read_image(shared_data / "pyradiomics_testdata" / "brain1_image.nrrd")
    ct = read_image(shared_data / "totalsegmentator_example" / "example_ct_sm.nii.gz")
    for img in (brain, ct):
        assert [slice_axis_for(img, v) for v in ("axial", "coronal", "sagittal")] == [0, 1, 2]


def test_slice_axis_permuted_direction() -> None:
    # Sagittal acquisition: i runs anterior->posterior, j superior->inferior, k along x.
    columns = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # i, j, k
    image = _volume(columns.T)  # direction matrix has the index axes as columns
    assert slice_axis_for(image, "sagittal") == 0  # k -> array axis 0
    assert slice_axis_for(image, "axial") == 1  # j -> array axis 1
    assert slice_axis_for(image, "coronal") == 2  # i -> array axis 2
    assert slice_axis_for(image, " Axial ") == 1


def test_slice_axis_oblique_is_a_permutation() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        axis = rng.normal(size=3)
        image = _volume(_rotation(axis, float(rng.uniform(0, 180))))
        axes = [slice_axis_for(image, v) for v in ("axial", "coronal", "sagittal")]
        assert sorted(axes) == [0, 1, 2]
    # 30 degrees about S keeps axial on k (array axis 0)
    assert slice_axis_for(_volume(_rotation(np.array([0, 0, 1.0]), 30)), "axial") == 0


def test_slice_axis_explicit_and_errors(oblique: sitk.Image) -> None:
    assert slice_axis_for(oblique, 2) == 2
    assert slice_axis_for(oblique, "1") == 1
    assert slice_axis_for(oblique, np.int64(0)) == 0
    with pytest.raises(PromptError, match="unknown view"):
        slice_axis_for(oblique, "oblique")
    with pytest.raises(PromptError, match="out of range"):
        slice_axis_for(oblique, 3)
    with pytest.raises(PromptError, match="out of range"):
        slice_axis_for(oblique, "-1")
    with pytest.raises(PromptError, match="3D"):
        slice_axis_for(sitk.Image(4, 4, sitk.sitkUInt8), "axial")


VIEWS = ("axial", "coronal", "sagittal")
RAS_FLIP = np.diag([-1.0, -1.0, 1.0])


def test_one_rule_for_lps_and_ras_directions() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        lps = _rotation(rng.normal(size=3), float(rng.uniform(0, 180)))
        ras = RAS_FLIP @ lps * np.array([0.7, 1.3, 2.5])  # Slicer's IJKToRAS carries the spacing
        image = _volume(lps)
        for view in (*VIEWS, 0, "2", *lps.T):  # names, axes and the three voxel-axis normals
            expected = slice_axis_for(image, view)
            assert slice_axis_from_direction(lps, view) == expected
            ras_view = RAS_FLIP @ view if isinstance(view, np.ndarray) else view
            assert slice_axis_from_direction(ras, ras_view, space="RAS") == expected


def test_double_oblique_views_get_three_planes_not_the_best_axis_each() -> None:
    # 35 degrees about L-R then 40 about A-P: S is closest to i (0.643) but k (0.628) is nearly
    # as close, and i is sagittal's axis (0.766). Axial gets k, not a copy of the sagittal plane.
    direction = _rotation(np.array([0, 1.0, 0]), 40) @ _rotation(np.array([1.0, 0, 0]), 35)
    assert int(np.argmax(np.abs(direction[2]))) == 0  # the per-view arg-max would say i
    assert [slice_axis_from_direction(direction, v) for v in VIEWS] == [0, 1, 2]


def test_exact_45_degree_ties_keep_the_unrotated_pairing() -> None:
    for axis in np.eye(3):
        direction = _rotation(axis, 45.0)
        assert [slice_axis_from_direction(direction, v) for v in VIEWS] == [0, 1, 2]


def test_slice_normals_are_strict() -> None:
    direction = _rotation(np.array([1.0, 0, 0]), 35.0)
    assert slice_axis_from_direction(direction, direction[:, 2]) == 0
    assert slice_axis_from_direction(direction, -direction[:, 0] * 3.0) == 2  # sign, length ignored
    assert slice_axis_for(_volume(direction), tuple(direction[:, 1])) == 1
    almost = direction[:, 1] + 0.05 * direction[:, 2]  # about 3 degrees off j: still j
    assert slice_axis_from_direction(direction, almost) == 1
    with pytest.raises(PromptError, match="oblique to volume 'x'.*Rotate to volume plane"):
        slice_axis_from_direction(direction, (0.0, 0.0, 1.0), where="volume 'x'")
    with pytest.raises(PromptError, match="zero vector"):
        slice_axis_from_direction(direction, (0.0, 0.0, 0.0))
    with pytest.raises(PromptError, match="unknown view"):
        slice_axis_from_direction(direction, (1.0, 0.0))
    with pytest.raises(PromptError, match="unknown view"):
        slice_axis_from_direction(direction, True)


def test_slice_axis_from_direction_errors() -> None:
    assert slice_axis_from_direction(np.eye(3), " Coronal ") == 1
    assert slice_axis_from_direction(np.eye(3), np.int64(2)) == 2
    with pytest.raises(PromptError, match="out of range"):
        slice_axis_from_direction(np.eye(3), "-1")
    with pytest.raises(PromptError, match="unknown view 'transverse'"):
        slice_axis_from_direction(np.eye(3), "transverse")
    with pytest.raises(PromptError, match="3D volume"):
        slice_axis_from_direction(np.eye(2), "axial")
    with pytest.raises(PromptError, match="zero column"):
        slice_axis_from_direction(np.diag([1.0, 0.0, 1.0]), "axial")
    with pytest.raises(ValueError, match="LPS"):
        slice_axis_from_direction(np.eye(3), "axial", space="ijk")
