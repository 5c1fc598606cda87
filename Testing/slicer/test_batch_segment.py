"""Scripts/batch_segment.py under plain Python (slicer-core): a real run, and bad input -> exit 2, one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer
from MiniSAMSegmentLib.segment_io import segment_array
from slicer_cases import BATCH_SCRIPT, CT, LIVER_BOX, LIVER_SLICE, REPO

from minisam.metrics import dice


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(
        [sys.executable, str(BATCH_SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"slice": LIVER_SLICE, "box": list(LIVER_BOX)}]))
    return path


def test_batch_script_writes_a_readable_seg_nrrd(
    context, ct_volume, liver_labels, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "liver.seg.nrrd"
    done = _script(
        "--input", str(shared_data / CT), "--prompts", str(_prompts(tmp_path)),
        "--output", str(out), "--model", "default", "--propagate", "--segment-name", "liver",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "slices along axis 0" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liver.seg.nrrd", "prompts.json"]
    loaded = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    context.scene.AddNode(storage)
    storage.SetFileName(str(out))
    assert storage.ReadData(loaded)
    assert loaded.GetSegmentation().GetNumberOfSegments() == 1
    seg_id = loaded.GetSegmentation().GetSegmentIdBySegmentName("liver")
    labels = segment_array(loaded, seg_id, ct_volume)
    assert np.count_nonzero(labels.any(axis=(1, 2))) >= 10
    assert dice(labels[LIVER_SLICE], liver_labels[LIVER_SLICE]) > 0.7


def test_bad_prompts_file_exits_2_with_one_line(shared_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"slice": 24, "box": [1, 2, 3]')
    out = tmp_path / "x.seg.nrrd"
    done = _script("--input", str(shared_data / CT), "--prompts", str(bad), "--output", str(out))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not valid JSON" in lines[0] and str(bad) in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--output": "{tmp}/x.nii.gz"}, "unsupported output file type"),
        ({"--input": "{tmp}/missing.nii.gz"}, "does not exist"),
        ({"--prompts": "{tmp}/off.json"}, "lies outside"),
        ({"--axis": "oblique"}, "unknown view"),
        ({"--min-score": "2"}, "--min-score"),
        ({"--model": "no_such_model"}, "unknown model"),
        ({"--adapter": "no_such_adapter"}, "is not installed"),
        ({"--input": None}, "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    batch, capsys, shared_data: Path, tmp_path: Path, change: dict, message: str
) -> None:
    (tmp_path / "off.json").write_text(json.dumps([{"slice": 3, "box": [100, 10, 200, 50]}]))
    args = {
        "--input": str(shared_data / CT),
        "--prompts": str(_prompts(tmp_path)),
        "--output": str(tmp_path / "x.seg.nrrd"),
    }
    args.update({k: (v.format(tmp=tmp_path) if v else v) for k, v in change.items()})
    argv = [item for key, value in args.items() if value is not None for item in (key, value)]
    assert batch.main(["--", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("batch_segment: error:") and message in err[0]
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_missing_packages_are_reported_not_installed(
    batch, capsys, monkeypatch, shared_data: Path, tmp_path: Path
) -> None:
    from MiniSAMSegmentLib import dependencies

    monkeypatch.setattr(dependencies, "missing_requirements", lambda: (True, ["tqdm>=4.60"]))
    monkeypatch.setattr(
        dependencies, "ensure_dependencies", lambda confirm: pytest.fail("nothing may be installed")
    )
    argv = ["--input", str(shared_data / CT), "--prompts", str(_prompts(tmp_path))]
    assert batch.main([*argv, "--output", str(tmp_path / "x.seg.nrrd")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch, tqdm>=4.60" in err[0] and "--install-dependencies" in err[0]


def test_an_unexpected_error_exits_1_instead_of_hanging_slicer(batch, capsys) -> None:
    def broken() -> int:
        raise RuntimeError("CUDA out of memory\nmore detail")

    assert batch.guarded(broken) == batch.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "batch_segment: unexpected error: RuntimeError: CUDA out of memory"
    )
    assert "Traceback" in err
    assert batch.guarded(lambda: batch.EXIT_BAD_INPUT) == batch.EXIT_BAD_INPUT
