"""Hostile inputs and outputs (issue 18), generated at run time: one stderr line, exit 2, nothing lost.

Each case runs the CLI in-process and captures file descriptor 2 (``capfd``), so what ITK, GDCM or
MetaIO print themselves counts as an extra line. Every case asserts the exit code, the single
``minisam <command>: error:`` line, no traceback, pre-existing files byte-identical and no leftover
temporaries or folders.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from minisam import atomic
from minisam.cli.main import main

TINY = ["--model", "random:tiny", "--quiet"]
BOX = ["--box", "4", "4", "30", "30"]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _refused(capfd, argv: list[str], words: str, folder: Path) -> str:
    """Run ``argv``; assert exit 2, one error line containing ``words``, ``folder`` unchanged."""
    before = _snapshot(folder)
    dirs_before = sorted(p for p in folder.rglob("*") if p.is_dir())
    code = _run(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    assert lines[0].startswith(f"minisam {argv[0]}: error:"), lines[0]
    assert words in lines[0], lines[0]
    assert "Traceback" not in err
    assert _snapshot(folder) == before, "a file was changed, removed or left behind"
    assert sorted(p for p in folder.rglob("*") if p.is_dir()) == dirs_before, "folders changed"
    return lines[0]


def _png(path: Path, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.integers(0, 255, (size, size), dtype=np.uint8)), str(path)
    )
    return path


def _volume(path: Path, shape=(12, 40, 40), dtype=np.int16, **geometry) -> Path:
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.integers(0, 1000, shape).astype(dtype))
    for name, value in geometry.items():
        getattr(image, f"Set{name.capitalize()}")(value)
    sitk.WriteImage(image, str(path), path.name.endswith(".gz"))
    return path


# ----------------------------------------------------------------------------- outputs vs inputs


@pytest.mark.parametrize("spelling", ["same", "relative", "dotted", "symlink", "hardlink"])
@pytest.mark.parametrize("flag", ["--output", "--overlay"])
def test_an_output_that_is_the_input_scan_is_refused(
    capfd, tmp_path: Path, monkeypatch, spelling: str, flag: str
) -> None:
    scan = _png(tmp_path / "scan.png")
    monkeypatch.chdir(tmp_path)
    target = {
        "same": str(scan),
        "relative": "scan.png",
        "dotted": f"../{tmp_path.name}/./scan.png",
    }.get(spelling)
    if spelling == "symlink":
        os.symlink(scan, tmp_path / "link.png")
        target = "link.png"
    elif spelling == "hardlink":
        os.link(scan, tmp_path / "hard.png")
        target = "hard.png"
    other = ["--overlay", "o.png"] if flag == "--output" else ["--output", "m.png"]
    line = _refused(
        capfd,
        ["segment", str(scan), *BOX, flag, target, *other, *TINY],
        "is the input file",
        tmp_path,
    )
    assert flag in line


def test_a_volume_mask_over_the_input_volume_is_refused(capfd, tmp_path: Path) -> None:
    ct = _volume(tmp_path / "ct.nii.gz")
    argv = ["segment", str(ct), "--slice", "3", *BOX, "--output", str(ct), *TINY]
    _refused(capfd, argv, "is the input file", tmp_path)


def test_a_full_disk_on_the_overlay_keeps_the_existing_mask(
    capfd, tmp_path: Path, monkeypatch
) -> None:
    from PIL import Image

    scan = _png(tmp_path / "scan.png")
    _png(tmp_path / "m.png", size=16)  # the user's earlier mask

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    argv = ["segment", str(scan), *BOX, "--output", str(tmp_path / "m.png")]
    _refused(capfd, [*argv, "--overlay", str(tmp_path / "o.png"), *TINY], "No space left", tmp_path)


def test_several_outputs_are_renamed_all_or_none(tmp_path: Path, monkeypatch) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a")
    second.write_text("old b")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == second and ".tmp-" in Path(src).name:
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError), atomic.atomic_outputs([first, second]) as (tmp_a, tmp_b):
        tmp_a.write_text("new a")
        tmp_b.write_text("new b")
    assert (first.read_text(), second.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_files_into_an_existing_folder_join_it_all_or_none(tmp_path: Path, monkeypatch) -> None:
    """quant-report's --out: new files join an existing folder, never half of them."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "b.json").write_text("old b")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out / "b.json" and ".tmp-" in Path(src).parent.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError), atomic.atomic_files_into(out) as staging:
        (staging / "a.png").write_text("new a")
        (staging / "b.json").write_text("new b")
    assert _snapshot(tmp_path) == {"report/b.json": b"old b", "report/notes.txt": b"mine"}
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    with atomic.atomic_files_into(out) as staging:
        (staging / "b.json").write_text("new b")
    assert _snapshot(tmp_path) == {"report/b.json": b"new b", "report/notes.txt": b"mine"}


def test_evaluate_out_holding_the_manifest_is_refused(capfd, tmp_path: Path) -> None:
    image = _png(tmp_path / "img.png")
    manifest = tmp_path / "cases.csv"  # the name of evaluate's own results file
    manifest.write_text(f"image,label\n{image.name},{image.name}\n")
    argv = ["evaluate", "--manifest", str(manifest), "--out", str(tmp_path), *TINY[:2], "--quiet"]
    _refused(capfd, argv, "is the input file", tmp_path)


def test_train_adapter_out_over_the_image_folder_is_refused(capfd, tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _png(images / "a.png")
    _png(masks / "a.png")
    argv = ["train-adapter", "--images", str(images), "--masks", str(masks), "--modality", "US"]
    for out in (images, tmp_path):  # the folder itself, or a folder holding it
        _refused(capfd, [*argv, "--out", str(out), "--overwrite"], "input", tmp_path)


@pytest.mark.parametrize(
    "command",
    [
        ["train-base", "--init", "ck.safetensors"],
        ["distill", "--student", "tiny", "--teacher", "ck.safetensors"],
    ],
    ids=["train-base", "distill"],
)
def test_a_checkpoint_out_over_the_model_it_reads_is_refused(
    capfd, tmp_path: Path, monkeypatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck.safetensors").write_bytes(b"the user's checkpoint")
    _png(tmp_path / "a.png")
    (tmp_path / "cases.csv").write_text("image,label\na.png,a.png\n")
    argv = [*command, "--manifest", "cases.csv", "--out", "./ck.safetensors", "--overwrite"]
    _refused(capfd, [*argv, "--quiet"], "is the input file", tmp_path)


def test_installing_an_adapter_over_itself_is_refused(capfd, tmp_path: Path) -> None:
    import shutil

    from minisam.adapters.library import BUILTIN_ROOT

    library = tmp_path / "library"
    shutil.copytree(BUILTIN_ROOT / "us_hc18", library / "us_hc18")
    argv = ["adapters", "--library", str(library), "install", str(library / "us_hc18"), "--replace"]
    _refused(capfd, argv, "is the input folder", tmp_path)


# ------------------------------------------------------------------------------- failed runs, folders


def test_evaluate_with_an_unknown_model_leaves_no_new_folder(capfd, tmp_path: Path) -> None:
    image = _png(tmp_path / "img.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,label\n{image.name},{image.name}\n")
    out = tmp_path / "new" / "deeper" / "out"
    argv = ["evaluate", "--manifest", str(manifest), "--out", str(out), "--model", "sam_vit_x"]
    _refused(capfd, [*argv, "--quiet"], "sam_vit_x", tmp_path)
    assert not (tmp_path / "new").exists()


def test_a_failed_export_leaves_no_cache_folder(tmp_path: Path, monkeypatch) -> None:
    """An encoder export that fails half-way (a full disk) leaves neither the export nor the new
    cache folders; a complete one is there whole."""
    from minisam.runtime.export_cache import ExportKey, cached_export, exports_dir

    monkeypatch.setenv("MINISAM_CACHE", str(tmp_path / "cache"))
    key = ExportKey("openvino", "0" * 16, 64)

    def half(folder: Path) -> None:
        (folder / "model.xml").write_text("<net/>")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        cached_export(key, half)
    assert list(tmp_path.iterdir()) == []
    folder, built = cached_export(key, lambda f: (f / "encoder.xml").write_text("<net/>"))
    assert built and folder.parent == exports_dir()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_the_export_cache_keeps_to_its_budget_least_recently_used_first(
    tmp_path: Path, monkeypatch
) -> None:
    """Each new export removes the least recently used others beyond $MINISAM_EXPORT_CACHE_MB; a
    cache hit counts as a use; recent exports, calibrated INT8 encoders and the new export stay;
    staging leftovers and the earlier versions' folder go once a day old."""
    import os
    import time

    from minisam.errors import InputError
    from minisam.runtime import export_cache
    from minisam.runtime.export_cache import ExportKey, cached_export

    monkeypatch.setenv("MINISAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(export_cache.BUDGET_ENV, "2")

    def megabyte(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"\0" * 900 * 1024)  # with export.json under 1 MB

    def age(folder: Path, hours: float) -> None:
        then = time.time() - hours * 3600
        os.utime(folder / export_cache.MANIFEST, (then, then))

    old, older, int8 = (
        cached_export(ExportKey("openvino", f"{i:016x}", 64, part), megabyte)[0]
        for i, part in ((1, "decoder"), (2, "decoder"), (3, "encoder-int8"))
    )
    for folder, hours in ((old, 2), (older, 3), (int8, 5)):
        age(folder, hours)
    leftover = old.parent / ".decoder-openvino-dead-64px.tmp"
    legacy = old.parent.parent / "encoder_exports"
    for folder in (leftover, legacy):
        folder.mkdir()
        then = time.time() - 2 * 86400
        os.utime(folder, (then, then))
    assert cached_export(ExportKey("openvino", f"{1:016x}", 64, "decoder"), megabyte) == (
        old,
        False,
    )
    age(old, 1)  # the hit made it the most recent of the two (kept an hour back, so prunable)

    new, built = cached_export(ExportKey("openvino", f"{4:016x}", 64, "decoder"), megabyte)
    assert built and new.exists() and old.exists() and int8.exists()
    assert not older.exists()  # 3 MB of decoders over a 2 MB budget: the least recently used went
    assert not leftover.exists() and not legacy.exists()

    # nothing used in the last ten minutes is removed, even over the budget
    for folder in (old, new):
        os.utime(folder / export_cache.MANIFEST)
    third, _ = cached_export(ExportKey("openvino", f"{5:016x}", 64, "decoder"), megabyte)
    assert old.exists() and new.exists() and third.exists()

    monkeypatch.setenv(export_cache.BUDGET_ENV, "lots")
    with pytest.raises(InputError, match="MINISAM_EXPORT_CACHE_MB='lots': expected a whole number"):
        cached_export(ExportKey("openvino", f"{6:016x}", 64, "decoder"), megabyte)
    assert not (old.parent / ExportKey("openvino", f"{6:016x}", 64, "decoder").folder_name).exists()


def test_new_folders_keeps_folders_that_existed_or_were_filled(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic.new_folders(tmp_path / "a" / "b" / "c"):
        (tmp_path / "a" / "kept.txt").write_text("x")
        raise RuntimeError
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["kept.txt"]


# ------------------------------------------------------------------------------ inputs read whole


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize(
    "name", ["half.nii.gz", "short.nii", "short.nrrd", "short.mha", "gz.nrrd", "gz.mha"]
)
def test_a_short_payload_is_refused(capfd, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    rng = np.random.default_rng(2)
    image = sitk.GetImageFromArray(rng.integers(0, 30000, (12, 40, 40)).astype(np.int16))
    sitk.WriteImage(image, str(path), name.endswith(".gz") or name.startswith("gz"))
    _cut(path, 0.6)
    argv = ["segment", str(path), "--slice", "3", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    line = _refused(capfd, [*argv, *TINY], name, tmp_path)
    assert "truncated" in line or "cannot read" in line


def test_a_short_bzip2_nrrd_payload_is_refused(capfd, tmp_path: Path) -> None:
    """bzip2 data is decompressed as a stream and counted, as gzip is (README, Bad input)."""
    import bz2

    voxels = np.random.default_rng(2).integers(0, 30000, (12, 40, 40)).astype("<i2").tobytes()
    header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 40 40 12\nendian: little\n"
    path = tmp_path / "short.nrrd"
    path.write_bytes(f"{header}encoding: bzip2\n\n".encode() + bz2.compress(voxels[:20000]))
    argv = ["segment", str(path), "--slice", "3", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    line = _refused(capfd, [*argv, *TINY], "short.nrrd", tmp_path)
    assert "truncated" in line and "holds 20000" in line


def test_a_short_detached_data_file_is_refused(capfd, tmp_path: Path) -> None:
    header = _volume(tmp_path / "v.mhd")
    _cut(tmp_path / "v.raw", 0.5)
    argv = ["segment", str(header), "--slice", "3", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    _refused(capfd, [*argv, *TINY], "v.raw", tmp_path)


def _dicom_series(
    folder: Path, count: int = 6, skip: int | None = None, smaller: int | None = None
) -> Path:
    """A CT series of ``count`` 40 x 40 slices; ``skip`` leaves one out, ``smaller`` crops one."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    volume = sitk.GetImageFromArray(rng.integers(0, 1000, (count, 40, 40)).astype(np.int16))
    volume.SetSpacing((0.8, 0.8, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(count):
        if k == skip:
            continue
        plane = volume[:, :, k] if k != smaller else volume[:30, :30, k]
        position = "\\".join(str(v) for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.2",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.3",
            "0020|0032": position,
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
        }.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:02d}.dcm"))
        writer.Execute(plane)
    return folder


def test_a_dicom_series_with_a_truncated_file_is_refused(capfd, tmp_path: Path) -> None:
    series = _dicom_series(tmp_path / "series")
    _cut(series / "slice03.dcm", 0.8)
    argv = ["segment", str(series), "--slice", "2", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    _refused(capfd, [*argv, *TINY], "slice03.dcm", tmp_path)


def test_a_dicom_series_with_a_missing_slice_is_refused(capfd, tmp_path: Path) -> None:
    series = _dicom_series(tmp_path / "series", skip=3)
    argv = ["segment", str(series), "--slice", "2", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    _refused(capfd, [*argv, *TINY], "missing slice", tmp_path)


def test_a_dicom_series_with_a_slice_of_another_size_is_refused(capfd, tmp_path: Path) -> None:
    series = _dicom_series(tmp_path / "series", smaller=4)
    argv = ["segment", str(series), "--slice", "2", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    _refused(capfd, [*argv, *TINY], "slices of different sizes", tmp_path)


def test_a_complete_dicom_series_still_reads(tmp_path: Path) -> None:
    from minisam.imageio import read_image

    assert read_image(_dicom_series(tmp_path / "series")).shape == (6, 40, 40)


def test_a_complete_dicom_series_reads_by_a_relative_path_through_dotdot(
    tmp_path: Path, monkeypatch
) -> None:
    from minisam.imageio import read_image

    _dicom_series(tmp_path / "series")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert read_image("../series").shape == (6, 40, 40)


def _huge_nifti(path: Path) -> Path:
    _volume(path, shape=(2, 4, 4))
    data = bytearray(path.read_bytes())
    data[40:48] = struct.pack("<4h", 3, 32767, 32767, 32767)  # dim[0..3]
    path.write_bytes(bytes(data))
    return path


def _huge_text_header(path: Path) -> Path:
    if path.suffix == ".nrrd":
        header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 32767 32767 32767\nendian: little\nencoding: raw\n\n"
    else:
        header = (
            "ObjectType = Image\nNDims = 3\nDimSize = 32767 32767 32767\n"
            "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
        )
    path.write_bytes(header.encode() + bytes(64))
    return path


def _huge_png(path: Path) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 32767, 32767, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1000)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("huge.nii", _huge_nifti),
        ("huge.nrrd", _huge_text_header),
        ("huge.mha", _huge_text_header),
        ("huge.png", _huge_png),
    ],
)
def test_a_huge_header_is_refused_before_allocating(
    capfd, tmp_path: Path, monkeypatch, name: str, make
) -> None:
    path = make(tmp_path / name)

    def no_pixels(self):
        raise AssertionError("the pixels were read")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", no_pixels)
    argv = ["segment", str(path), "--slice", "3", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    line = _refused(capfd, [*argv, *TINY], name, tmp_path)
    assert "input budget" in line or "can hold" in line


def test_the_memory_budget_is_what_the_readme_states() -> None:
    from minisam.input_checks import MAX_INPUT_BYTES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert MAX_INPUT_BYTES == 4 * 1024**3 and "4 GiB" in readme


def test_nan_in_a_float_nifti_is_refused_though_itk_reads_it_as_zero(capfd, tmp_path: Path) -> None:
    array = np.ones((6, 40, 40), np.float32)
    array[2, 5, 5] = np.nan
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), True)
    argv = ["segment", str(path), "--slice", "3", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    _refused(capfd, [*argv, *TINY], "1 NaN or infinite", tmp_path)


# --------------------------------------------------------------------------------- label grids


GRID_CHANGES = [
    {"spacing": (1.0, 1.0, 3.0)},
    {"origin": (0.0, 5.0, 0.0)},
    {"direction": (0, 1, 0, 1, 0, 0, 0, 0, 1)},
]


def _image_and_labels_on_another_grid(folder: Path, change: dict) -> None:
    """``img.nii.gz`` and ``lab.nii.gz`` of the same shape, the labels' grid changed by ``change``."""
    _volume(folder / "img.nii.gz")
    label = np.zeros((12, 40, 40), np.uint8)
    label[:, 10:30, 10:30] = 1
    image = sitk.GetImageFromArray(label)
    for name, value in change.items():
        getattr(image, f"Set{name.capitalize()}")(value)
    sitk.WriteImage(image, str(folder / "lab.nii.gz"), True)


@pytest.mark.parametrize("change", GRID_CHANGES)
def test_train_adapter_refuses_labels_on_another_grid(capfd, tmp_path: Path, change: dict) -> None:
    _image_and_labels_on_another_grid(tmp_path, change)
    manifest = tmp_path / "train.csv"
    manifest.write_text("image,label\nimg.nii.gz,lab.nii.gz\n")
    argv = ["train-adapter", "--manifest", str(manifest), "--modality", "CT", "--quiet"]
    line = _refused(capfd, [*argv, "--out", str(tmp_path / "adapter")], "not on the grid", tmp_path)
    assert next(iter(change)) in line


@pytest.mark.parametrize("change", GRID_CHANGES)
def test_evaluate_fails_a_case_whose_labels_are_on_another_grid(
    capfd, tmp_path: Path, change: dict
) -> None:
    """evaluate goes on with the other cases: the case is not scored but listed as failed with the
    reason (one line each on stderr, exit 1), as any unreadable case is."""
    _image_and_labels_on_another_grid(tmp_path, change)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\nimg.nii.gz,lab.nii.gz\n")
    out = tmp_path / "report"
    assert _run(["evaluate", "--manifest", str(manifest), "--out", str(out), *TINY]) == 1
    err = capfd.readouterr().err
    reason = f"label lab.nii.gz is not on the grid of image img.nii.gz: {next(iter(change))} ("
    assert (
        err.startswith(f"minisam evaluate: cases/img failed: {reason}") and "Traceback" not in err
    )
    (failed,) = json.loads((out / "summary.json").read_text())["failed"]
    assert failed["error"].startswith(reason)


def test_grid_mismatch_tolerance_is_stated_and_applied() -> None:
    from minisam.geometry import GRID_TOLERANCE, grid_mismatch

    a = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    b = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    b.SetOrigin((GRID_TOLERANCE / 2, 0, 0))
    assert grid_mismatch(a, b) is None
    b.SetOrigin((GRID_TOLERANCE * 5, 0, 0))
    assert "origin" in grid_mismatch(a, b)


# ---------------------------------------------------------------------------------------- quiet


def test_a_normal_segment_run_prints_nothing_on_stderr(capfd, tmp_path: Path) -> None:
    ct = _volume(tmp_path / "ct.nrrd")
    argv = ["segment", str(ct), "--slice", "3", *BOX, "--output", str(tmp_path / "m.nii.gz")]
    assert _run([*argv, "--overlay", str(tmp_path / "o.png"), *TINY]) == 0
    assert capfd.readouterr().err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd", "m.nii.gz", "o.png"]


def test_verbose_lets_the_libraries_messages_through(capfd) -> None:
    from minisam.library_noise import native_output_captured, show_native_output

    try:
        show_native_output(True)
        with native_output_captured():
            os.write(2, b"native line\n")
        assert capfd.readouterr().err == "native line\n"
        show_native_output(False)
        with native_output_captured():
            os.write(2, b"native line\n")
        assert capfd.readouterr().err == ""
    finally:
        show_native_output(False)


def test_prompts_json_is_not_overwritten_either(capfd, tmp_path: Path) -> None:
    ct = _volume(tmp_path / "ct.nii.gz")
    prompts = tmp_path / "p.nrrd"  # an odd name, but the file the run reads
    prompts.write_text(json.dumps([{"slice": 3, "box": [4, 4, 30, 30]}]))
    argv = ["segment", str(ct), "--prompts", str(prompts), "--output", str(prompts), *TINY]
    _refused(capfd, argv, "is the input file", tmp_path)
