"""Reading every supported format from real data, geometry-exact mask writing, atomic output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from minisam import imageio
from minisam.atomic import atomic_output, full_suffix
from minisam.errors import InputError, OutputError
from minisam.imageio import check_output_path, read_image, write_mask, write_rgb_png

# --------------------------------------------------------------------------------------------
# helpers


def _first(folder: Path, pattern: str) -> Path:
    files = sorted(folder.glob(pattern))
    assert files, f"no {pattern} in {folder}"
    return files[0]


def _assert_same_geometry(written: Path, reference: sitk.Image) -> None:
    out = sitk.ReadImage(str(written))
    assert out.GetSize() == reference.GetSize()
    assert out.GetOrigin() == pytest.approx(reference.GetOrigin(), abs=1e-4)
    assert out.GetSpacing() == pytest.approx(reference.GetSpacing(), abs=1e-6)
    assert out.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)


def _oblique_volume() -> sitk.Image:
    """Small int16 volume with non-unit spacing, an odd origin and a 30 degree rotation."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (6, 7, 8), dtype=np.int16))
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((-12.5, 40.25, 7.0))
    return image


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# reading real data


def test_read_cxr_png(shared_data: Path) -> None:
    img = read_image(_first(shared_data / "cxr_lung_montgomery_shenzhen" / "images", "*.png"))
    assert img.shape == (512, 512)
    assert img.array.dtype == np.uint8
    assert not img.is_volume and not img.is_rgb
    assert img.modality is None
    assert len(img.spacing) == 2


def test_read_kvasir_jpeg_rgb(shared_data: Path) -> None:
    path = _first(shared_data / "kvasir_seg_sample" / "images", "*.jpg")
    img = read_image(path)
    assert img.is_rgb and not img.is_volume
    assert img.array.ndim == 3 and img.array.shape[2] == 3
    assert img.array.dtype == np.uint8
    assert img.spatial_shape == img.shape[:2]
    # The reference keeps its 2D geometry as a vector image (x-first size = array's W, H).
    assert img.image.GetDimension() == 2
    assert img.image.GetSize() == (img.shape[1], img.shape[0])
    assert img.path == path


def test_read_nifti_ct(shared_data: Path) -> None:
    path = shared_data / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    img = read_image(path)
    ref = sitk.ReadImage(str(path))
    assert img.is_volume
    assert img.shape == tuple(reversed(ref.GetSize()))  # (Z, Y, X)
    assert img.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert img.origin == pytest.approx(ref.GetOrigin())
    assert img.direction == pytest.approx(ref.GetDirection())
    assert img.array.dtype == np.int16
    assert img.array.min() < -500 and img.array.max() > 300  # Hounsfield units


def test_read_dicom_folder(shared_data: Path) -> None:
    img = read_image(shared_data / "totalsegmentator_example" / "example_ct_dicom")
    assert img.shape == (20, 512, 512)
    assert img.modality == "CT"
    assert img.is_volume
    assert img.spacing[2] == pytest.approx(2.0)


def test_read_single_dicom_file(shared_data: Path) -> None:
    # One slice of a series: a 3D file with Z=1 comes back 2D, modality from the header.
    img = read_image(shared_data / "dcmqi_ct3slice_seg" / "ct_dicom" / "01.dcm")
    assert img.shape == (512, 512)
    assert not img.is_volume
    assert img.modality == "CT"


def test_read_dicom_file_without_extension(shared_data: Path) -> None:
    folder = shared_data / "totalsegmentator_example" / "example_ct_dicom"
    img = read_image(_first(folder, "CT.*"))
    assert img.shape == (512, 512)
    assert img.modality == "CT"


def test_read_nrrd(shared_data: Path) -> None:
    img = read_image(shared_data / "pyradiomics_testdata" / "brain1_image.nrrd")
    assert img.shape == (25, 256, 256)
    assert img.spacing == pytest.approx((0.78125, 0.78125, 6.5))
    assert img.direction == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, 1))


def test_read_mha_and_mhd(tmp_path: Path) -> None:
    src = _oblique_volume()
    for name in ("v.mha", "v.mhd"):
        sitk.WriteImage(src, str(tmp_path / name))
        img = read_image(tmp_path / name)
        assert img.shape == (6, 7, 8)
        assert np.array_equal(img.array, sitk.GetArrayFromImage(src))
        assert img.direction == pytest.approx(src.GetDirection())


def test_read_rgba_png_drops_alpha(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (5, 6, 3)
    assert img.array[0, 0].tolist() == [200, 0, 0]


def test_read_grey_alpha_png(tmp_path: Path) -> None:
    # ITK rejects 2-channel PNGs; imageio falls back to Pillow and drops the alpha channel.
    from PIL import Image

    la = np.zeros((5, 6, 2), np.uint8)
    la[..., 0], la[..., 1] = 9, 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert img.shape == (5, 6)
    assert int(img.array.max()) == 9


def test_4d_with_one_time_point_is_3d(tmp_path: Path) -> None:
    vol = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    vol.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(sitk.JoinSeries([vol]), str(tmp_path / "t1.mha"))
    img = read_image(tmp_path / "t1.mha")
    assert img.shape == (3, 4, 5)
    assert img.spacing == pytest.approx((1.0, 2.0, 3.0))


# --------------------------------------------------------------------------------------------
# bad inputs


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as info:
        read_image(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.nii.gz")


@pytest.mark.parametrize("name", ["corrupt.nii.gz", "corrupt.png", "corrupt.nrrd"])
def test_corrupt_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert name in message
    assert "\n" not in message


def test_4d_nifti_joinseries(tmp_path: Path) -> None:
    vol = sitk.Image(4, 5, 6, sitk.sitkInt16)
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="4D"):
        read_image(tmp_path / "t.nii.gz")


def test_4d_array_mha(tmp_path: Path) -> None:
    # isVector=False: by default SimpleITK reads a 4D array as a 3D volume of 5-vectors.
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False)
    assert image.GetDimension() == 4
    sitk.WriteImage(image, str(tmp_path / "t.mha"))
    with pytest.raises(InputError, match="4D"):
        read_image(tmp_path / "t.mha")


@pytest.mark.parametrize("name", ["c.mha", "c.nrrd", "c2d.nrrd"])
def test_complex_image(tmp_path: Path, name: str) -> None:
    shape = (4, 5) if name.startswith("c2d") else (3, 4, 5)
    image = sitk.GetImageFromArray(np.ones(shape, np.complex64))
    sitk.WriteImage(image, str(tmp_path / name))
    with pytest.raises(InputError, match="complex"):
        read_image(tmp_path / name)


def test_vector_volume(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgbvol.nrrd"))
    with pytest.raises(InputError, match="components"):
        read_image(tmp_path / "rgbvol.nrrd")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["nan.nii.gz", "nan.nii", "nan.nrrd", "nan.mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_volume(tmp_path: Path, bad: float, name: str, dtype: type) -> None:
    # NIfTI matters most: ITK's reader turns NaN/inf into 0, so imageio inspects the raw data.
    data = np.zeros((3, 4, 5), dtype)
    data[1, 2, 3] = bad
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / name))
    with pytest.raises(InputError, match="1 NaN or infinite"):
        read_image(tmp_path / name)


def test_finite_float_nifti_reads(tmp_path: Path) -> None:
    data = np.linspace(-1, 1, 60, dtype=np.float32).reshape(3, 4, 5)
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / "ok.nii.gz"))
    assert np.array_equal(read_image(tmp_path / "ok.nii.gz").array, data)


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported") as info:
        read_image(tmp_path / "notes.txt")
    assert "notes.txt" in str(info.value)


def test_empty_dicom_folder(tmp_path: Path) -> None:
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "readme.txt").write_text("not dicom")
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "dicom")


def test_one_slice_volume_becomes_2d(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(20, dtype=np.int16).reshape(1, 4, 5))
    image.SetSpacing((0.5, 0.25, 3.0))
    sitk.WriteImage(image, str(tmp_path / "one.nii.gz"))
    img = read_image(tmp_path / "one.nii.gz")
    assert img.shape == (4, 5)
    assert img.spacing == pytest.approx((0.5, 0.25))


# --------------------------------------------------------------------------------------------
# output path checks


def test_check_output_path_ok(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "m.nii.gz", (".nii.gz",)) == tmp_path / "m.nii.gz"
    assert _listing(tmp_path) == []  # the write probe is cleaned up


def test_output_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "m.nii.gz", (".nii.gz",))


def test_output_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="unsupported") as info:
        check_output_path(tmp_path / "m.jpg", (".png", ".nii.gz"))
    assert "m.jpg" in str(info.value)
    # ".gz" alone is not ".nii.gz"
    with pytest.raises(OutputError):
        check_output_path(tmp_path / "m.gz", (".nii.gz",))


def test_output_is_directory(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    with pytest.raises(OutputError, match="directory"):
        check_output_path(tmp_path / "d.png", (".png",))


def test_output_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_output_path(tmp_path / "file" / "m.png", (".png",))


def test_output_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits; /proc exists, is a folder and refuses new files.
        target = Path("/proc") / "minisam_mask.png"
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(target, (".png",))
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(locked / "m.png", (".png",))
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------------------------
# mask writing


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.nii", "mask.nrrd", "mask.mha", "mask.mhd"])
def test_write_mask_volume_geometry(tmp_path: Path, name: str) -> None:
    src = _oblique_volume()
    sitk.WriteImage(src, str(tmp_path / "src.nrrd"))
    ref = read_image(tmp_path / "src.nrrd")
    labels = np.zeros(ref.shape, np.uint8)
    labels[2:4, 1:5, 3:6] = 1
    labels[0, 0, 0] = 3
    write_mask(labels, ref, tmp_path / name)
    _assert_same_geometry(tmp_path / name, src)
    back = sitk.ReadImage(str(tmp_path / name))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
    assert not [n for n in _listing(tmp_path) if ".tmp-" in n or ".probe-" in n]


def test_write_mask_ct_nifti_roundtrip(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "totalsegmentator_example" / "example_ct_sm.nii.gz"
    ref = read_image(path)
    mask = ref.array > 0
    write_mask(mask, ref, tmp_path / "ct_mask.nii.gz")
    _assert_same_geometry(tmp_path / "ct_mask.nii.gz", sitk.ReadImage(str(path)))
    back = read_image(tmp_path / "ct_mask.nii.gz")
    assert np.array_equal(back.array, mask.astype(np.uint8))


def test_write_mask_png(shared_data: Path, tmp_path: Path) -> None:
    ref = read_image(_first(shared_data / "cxr_lung_montgomery_shenzhen" / "images", "*.png"))
    mask = np.zeros(ref.shape, bool)
    mask[100:200, 50:300] = True
    write_mask(mask, ref, tmp_path / "mask.png")
    _assert_same_geometry(tmp_path / "mask.png", ref.image)
    back = read_image(tmp_path / "mask.png").array
    assert set(np.unique(back).tolist()) == {0, 255}
    assert np.array_equal(back > 0, mask)


def test_write_mask_for_rgb_reference(shared_data: Path, tmp_path: Path) -> None:
    ref = read_image(_first(shared_data / "kvasir_seg_sample" / "images", "*.jpg"))
    mask = np.zeros(ref.spatial_shape, np.uint8)
    mask[10:20, 30:40] = 1
    for name in ("rgb_mask.png", "rgb_mask.nrrd"):
        write_mask(mask, ref, tmp_path / name)
        out = sitk.ReadImage(str(tmp_path / name))
        assert out.GetNumberOfComponentsPerPixel() == 1
        assert out.GetSize() == ref.image.GetSize()
        assert np.array_equal(sitk.GetArrayFromImage(out) > 0, mask > 0)


def test_write_mask_wrong_shape(tmp_path: Path) -> None:
    sitk.WriteImage(_oblique_volume(), str(tmp_path / "src.nrrd"))
    ref = read_image(tmp_path / "src.nrrd")
    with pytest.raises(InputError, match="shape"):
        write_mask(np.zeros((6, 8, 7), np.uint8), ref, tmp_path / "m.nii.gz")
    assert not (tmp_path / "m.nii.gz").exists()


def test_write_mask_bad_values(tmp_path: Path) -> None:
    sitk.WriteImage(_oblique_volume(), str(tmp_path / "src.nrrd"))
    ref = read_image(tmp_path / "src.nrrd")
    with pytest.raises(InputError, match="0 and 255"):
        write_mask(np.full(ref.shape, 300, np.int32), ref, tmp_path / "m.nii.gz")
    with pytest.raises(InputError, match="0 and 255"):
        write_mask(np.full(ref.shape, 0.5), ref, tmp_path / "m.nii.gz")


def test_write_3d_mask_to_png_refused(tmp_path: Path) -> None:
    sitk.WriteImage(_oblique_volume(), str(tmp_path / "src.nrrd"))
    ref = read_image(tmp_path / "src.nrrd")
    with pytest.raises(OutputError, match="3D"):
        write_mask(np.zeros(ref.shape, np.uint8), ref, tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


def test_write_mask_into_missing_folder(tmp_path: Path) -> None:
    sitk.WriteImage(_oblique_volume(), str(tmp_path / "src.nrrd"))
    ref = read_image(tmp_path / "src.nrrd")
    with pytest.raises(OutputError, match="does not exist"):
        write_mask(np.zeros(ref.shape, np.uint8), ref, tmp_path / "missing" / "m.nii.gz")


# --------------------------------------------------------------------------------------------
# atomic output


@pytest.mark.parametrize("name", ["m.nii.gz", "m.mhd"])
def test_atomic_write_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    sitk.WriteImage(_oblique_volume(), str(tmp_path / "src.nrrd"))
    ref = read_image(tmp_path / "src.nrrd")
    real_write = sitk.WriteImage
    written: list[str] = []

    def write_then_fail(image: sitk.Image, path: str, *args: object) -> None:
        real_write(image, path, *args)  # a complete-looking partial output exists...
        written.append(path)
        raise RuntimeError("disk full\nsitk::ERROR: simulated failure midway")  # ...then fail

    monkeypatch.setattr(imageio.sitk, "WriteImage", write_then_fail)
    with pytest.raises(OutputError, match="simulated failure") as info:
        write_mask(np.ones(ref.shape, np.uint8), ref, tmp_path / name)
    assert "\n" not in str(info.value)
    assert written and ".tmp-" in written[0]  # it never wrote the target directly
    assert _listing(tmp_path) == ["src.nrrd"]


def test_atomic_write_failure_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = read_image(_write_small_png(tmp_path / "src.png"))
    target = tmp_path / "m.png"
    target.write_bytes(b"previous")

    def fail(*args: object) -> None:
        Path(str(args[1])).write_bytes(b"partial")
        raise RuntimeError("simulated")

    monkeypatch.setattr(imageio.sitk, "WriteImage", fail)
    with pytest.raises(OutputError):
        write_mask(np.zeros(ref.shape, np.uint8), ref, target)
    assert target.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["m.png", "src.png"]


def test_write_rgb_png_roundtrip_and_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    write_rgb_png(rgb, tmp_path / "overlay.png")
    img = read_image(tmp_path / "overlay.png")
    assert img.is_rgb and np.array_equal(img.array, rgb)

    with pytest.raises(InputError, match="uint8"):
        write_rgb_png(rgb.astype(np.float32), tmp_path / "bad.png")
    with pytest.raises(OutputError, match="unsupported"):
        write_rgb_png(rgb, tmp_path / "overlay.jpg")

    from PIL import Image

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"partial")
        raise OSError("simulated save failure")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OutputError, match="simulated save failure"):
        write_rgb_png(rgb, tmp_path / "second.png")
    assert _listing(tmp_path) == ["overlay.png"]


def test_atomic_output_success_and_suffix(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.nii.gz"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".ckpt.tmp-") and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert _listing(tmp_path) == ["ckpt.nii.gz"]
    assert full_suffix("a/b.nii.gz") == ".nii.gz"
    assert full_suffix("b.v1.nrrd") == ".nrrd"
    assert full_suffix("noext") == ""


def _write_small_png(path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 6), np.uint8)), str(path))
    return path
