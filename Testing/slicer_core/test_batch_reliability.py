"""batch_segment.py on hostile inputs (issue 18): exit 2, one stderr line (no VTK/ITK noise), nothing written.

The script runs in-process; ``capfd`` captures file descriptor 2, where VTK and ITK print from C++.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _four_d(path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((2, 3, 8, 8), np.float32), isVector=False)
    sitk.WriteImage(image, str(path))


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(600))


def _huge_header(path: Path) -> None:
    header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 32767 32767 32767\nendian: little\n"
    path.write_bytes((header + "encoding: raw\n\n").encode() + bytes(64))


def _all_nan(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, np.float32)), str(path))


def _half_nifti(path: Path) -> None:
    rng = np.random.default_rng(1)
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.integers(0, 9000, (6, 20, 20)).astype(np.int16)), str(path)
    )
    path.write_bytes(path.read_bytes()[:1500])


def _argv(volume: Path, tmp_path: Path) -> list[str]:
    """Arguments for ``volume`` with a prompts file (slice 1) and a .seg.nrrd output in ``tmp_path``."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"slice": 1, "box": [1, 1, 5, 5]}]))
    output = str(tmp_path / "o.seg.nrrd")
    return ["--input", str(volume), "--prompts", str(prompts), "--output", output]


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("empty.nii.gz", _empty, "empty"),
        ("four_d.nii.gz", _four_d, "4D"),
        ("random.nii.gz", _random_bytes, "cannot read"),
        ("huge.nrrd", _huge_header, "input budget"),
        ("nan.nrrd", _all_nan, "256 NaN or infinite"),
        ("half.nii", _half_nifti, "truncated"),
    ],
)
def test_hostile_volume_is_one_line_exit_2(batch, capfd, tmp_path: Path, name, make, words) -> None:
    volume = tmp_path / name
    make(volume)
    argv = _argv(volume, tmp_path)
    before = sorted(os.listdir(tmp_path))
    assert batch.main(argv) == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("batch_segment: error:") and words in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == before


def test_nan_is_refused_with_the_cli_s_words(batch, capfd, tmp_path: Path) -> None:
    from minisam.cli.main import main

    volume = tmp_path / "nan.nrrd"
    _all_nan(volume)
    argv = _argv(volume, tmp_path)
    prompts = Path(argv[3])
    assert batch.main(argv) == 2
    script = capfd.readouterr().err.strip().split("error: ", 1)[1]
    out = ["--output", str(tmp_path / "m.nii.gz"), "--model", "random:tiny", "--quiet"]
    assert main(["segment", str(volume), "--prompts", str(prompts), *out]) == 2
    cli = capfd.readouterr().err.strip().split("error: ", 1)[1]
    assert script == cli


def test_output_over_the_input_is_refused(batch, capfd, tmp_path: Path) -> None:
    volume = tmp_path / "ct.seg.nrrd"  # a volume that happens to carry the output's suffix
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(volume))
    original = volume.read_bytes()
    argv = _argv(volume, tmp_path)
    assert batch.main([*argv[:-1], str(volume)]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is the input file" in lines[0]
    assert volume.read_bytes() == original
