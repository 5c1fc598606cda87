"""Intensity normalisation to SAM's 0..255 input, modality guessing, grey -> RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from minisam.errors import InputError
from minisam.imageio import MedicalImage, read_image
from minisam.intensity import (
    CT_WINDOWS,
    choose_preset,
    guess_preset,
    normalize_intensity,
    to_rgb,
)
from minisam.modality import CT_PRESETS


def test_ct_window_presets() -> None:
    assert CT_WINDOWS["ct"] == (40, 400)
    assert CT_WINDOWS["ct-abdomen"] == (50, 350)
    assert CT_WINDOWS["ct-lung"] == (-600, 1500)
    assert CT_WINDOWS["ct-bone"] == (400, 1800)
    assert CT_WINDOWS["ct-brain"] == (40, 80)


def test_ct_soft_tissue_window() -> None:
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.int16)
    out = normalize_intensity(hu, "ct")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 127.5, 255.0, 255.0], atol=1e-3)


@pytest.mark.parametrize("name", sorted(CT_WINDOWS))
def test_ct_presets_map_window_edges(name: str) -> None:
    level, width = CT_WINDOWS[name]
    values = np.array([level - width / 2, level, level + width / 2], dtype=np.float32)
    np.testing.assert_allclose(normalize_intensity(values, name), [0, 127.5, 255], atol=1e-3)


def test_explicit_window_overrides_preset() -> None:
    hu = np.array([-100.0, 0.0, 100.0])
    np.testing.assert_allclose(normalize_intensity(hu, "ct", window=(0, 200)), [0, 127.5, 255])
    with pytest.raises(InputError, match="width"):
        normalize_intensity(hu, "ct", window=(0, 0))


def test_mr_robust_percentiles_volume_wide() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(500, 100, (4, 50, 50)).astype(np.float32)
    volume[0, 0, 0] = 1e6  # a single hot voxel must not compress the whole range
    out = normalize_intensity(volume, "mr")
    assert out.dtype == np.float32 and out.shape == volume.shape
    assert out.min() == 0.0 and out.max() == 255.0
    assert 100 < float(np.median(out)) < 155
    low, high = np.percentile(volume, (0.5, 99.5))
    expected = np.clip((volume[2] - low) / (high - low) * 255, 0, 255)
    np.testing.assert_allclose(out[2], expected, atol=1e-2)


def test_mr_mapping_is_shared_across_slices() -> None:
    # A dark slice stays dark inside the volume instead of being stretched on its own.
    volume = np.stack([np.linspace(0, 100, 400), np.linspace(0, 1000, 400)]).astype(np.float32)
    whole = normalize_intensity(volume, "mr")
    alone = normalize_intensity(volume[0], "mr")
    assert whole[0].max() < 40.0
    assert alone.max() == 255.0


def test_us_uses_percentiles_too() -> None:
    data = np.arange(1000, dtype=np.float32)
    out = normalize_intensity(data, "us")
    low, high = np.percentile(data, (0.5, 99.5))
    np.testing.assert_allclose(out[500], (500 - low) / (high - low) * 255, atol=1e-3)


def test_constant_array_gives_zeros() -> None:
    for modality in ("mr", "us", "raw", "xray"):
        out = normalize_intensity(np.full((3, 4), 7.0), modality)
        assert out.dtype == np.float32
        assert not out.any()


def test_mostly_background_falls_back_to_min_max() -> None:
    data = np.zeros(10000, np.float32)
    data[:5] = 100.0  # 0.05 %: both percentiles are 0
    out = normalize_intensity(data, "mr")
    assert out.max() == 255.0 and out.min() == 0.0


def test_xray_uint8_kept_and_others_min_max() -> None:
    grey = np.array([[3, 100, 250]], dtype=np.uint8)
    np.testing.assert_array_equal(normalize_intensity(grey, "xray"), grey.astype(np.float32))
    sixteen = np.array([1000, 2000, 3000], dtype=np.uint16)
    np.testing.assert_allclose(normalize_intensity(sixteen, "xray"), [0, 127.5, 255])


def test_rgb_and_raw() -> None:
    rgb = np.array([[[-5.0, 12.0, 300.0]]])
    np.testing.assert_array_equal(normalize_intensity(rgb, "rgb"), [[[0.0, 12.0, 255.0]]])
    np.testing.assert_allclose(
        normalize_intensity(np.array([-1.0, 0.0, 1.0]), "raw"), [0, 127.5, 255]
    )


def test_auto_from_array() -> None:
    hu = np.array([-1000, 0, 1000], dtype=np.int16)
    np.testing.assert_array_equal(normalize_intensity(hu, "auto"), normalize_intensity(hu, "ct"))
    grey = np.array([0, 77, 200], dtype=np.uint8)
    np.testing.assert_array_equal(normalize_intensity(grey, "auto"), grey.astype(np.float32))


def test_unknown_modality_lists_choices() -> None:
    with pytest.raises(InputError) as info:
        normalize_intensity(np.zeros(3), "pet")
    message = str(info.value)
    assert "pet" in message and "ct-lung" in message and "mr" in message
    assert "\n" not in message
    with pytest.raises(InputError):
        normalize_intensity(np.zeros(3), "ct-liver")


def test_non_finite_and_empty_rejected() -> None:
    with pytest.raises(InputError, match="NaN"):
        normalize_intensity(np.array([0.0, np.nan]), "mr")
    with pytest.raises(InputError, match="empty"):
        normalize_intensity(np.zeros((0, 3)), "mr")


def _fake(array: np.ndarray, modality: str | None = None) -> MedicalImage:
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3 and array.shape[-1] == 3)
    if array.ndim == 3 and array.shape[-1] != 3:
        image = sitk.GetImageFromArray(array)
    return MedicalImage(array=array, image=image, path=Path("x"), modality=modality)


def test_guess_preset_rules() -> None:
    assert guess_preset(_fake(np.zeros((4, 5), np.int16), "MR")) == "mr"
    assert guess_preset(_fake(np.zeros((4, 5), np.uint8), "US")) == "us"
    for tag in ("CR", "DX", "MG"):
        assert guess_preset(_fake(np.zeros((4, 5), np.uint16), tag)) == "xray"
    assert guess_preset(_fake(np.zeros((4, 5, 3), np.uint8))) == "rgb"
    hu = np.zeros((3, 4, 5), np.int16)
    hu[0, 0, 0], hu[0, 0, 1] = -1000, 400
    assert guess_preset(_fake(hu)) == "ct"
    assert guess_preset(_fake(np.zeros((4, 5), np.uint8))) == "xray"
    assert guess_preset(_fake(np.zeros((3, 4, 5), np.float32))) == "mr"
    assert guess_preset(_fake(hu, "OT")) == "ct"  # unknown tag falls through to heuristics
    assert guess_preset(_fake(hu, "PT")) == "ct"  # a family without a preset: heuristics too


def test_every_dicom_code_of_a_family_gets_its_preset() -> None:
    """One table: the X-ray and ultrasound codes the adapters know normalise as X-ray / ultrasound.

    Before minisam.modality, intensity knew only CR/DX/MG and US, so an angiogram (XA) or an
    intravascular ultrasound (IVUS) fell through to the value heuristics ("mr" for 16-bit 2D).
    """
    for tag in ("XA", "RF", "PX", "IO"):
        assert guess_preset(_fake(np.zeros((4, 5), np.uint16), tag)) == "xray"
    assert guess_preset(_fake(np.zeros((4, 5), np.uint16), "IVUS")) == "us"


def test_choose_preset() -> None:
    image = _fake(np.zeros((4, 5), np.uint8), "US")
    assert choose_preset("auto", image) == choose_preset(" AUTO ", image) == "us"
    assert choose_preset("CT-Lung", image) == "ct-lung"
    with pytest.raises(InputError, match="unknown modality 'DX'"):
        choose_preset("DX", image)


def test_ct_windows_are_the_ct_presets() -> None:
    assert tuple(CT_WINDOWS) == CT_PRESETS


def test_guess_preset_real_data(shared_data: Path) -> None:
    dicom = read_image(shared_data / "totalsegmentator_example" / "example_ct_dicom")
    assert guess_preset(dicom) == "ct"
    ct = read_image(shared_data / "totalsegmentator_example" / "example_ct_sm.nii.gz")
    assert guess_preset(ct) == "ct"  # no tag: HU range
    mr = read_image(shared_data / "totalsegmentator_example" / "example_mr_sm.nii.gz")
    assert guess_preset(mr) == "mr"
    flair = read_image(
        shared_data / "brats2021_samplecase_sammed3d" / "BraTS2021_01646_flair.nii.gz"
    )
    assert guess_preset(flair) == "mr"
    cxr = read_image(
        sorted((shared_data / "cxr_lung_montgomery_shenzhen" / "images").glob("*.png"))[0]
    )
    assert guess_preset(cxr) == "xray"
    kvasir = read_image(sorted((shared_data / "kvasir_seg_sample" / "images").glob("*.jpg"))[0])
    assert guess_preset(kvasir) == "rgb"
    out = normalize_intensity(ct.array, guess_preset(ct))
    assert out.shape == ct.shape and 0.0 <= out.min() and out.max() <= 255.0


def test_to_rgb() -> None:
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    rgb = to_rgb(grey)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.float32
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)
    colour = np.random.default_rng(0).uniform(0, 255, (2, 3, 3))
    np.testing.assert_allclose(to_rgb(colour), colour.astype(np.float32))
    assert to_rgb(grey[..., None]).shape == (2, 3, 3)
    with pytest.raises(InputError, match="shape"):
        to_rgb(np.zeros((2, 3, 4)))
