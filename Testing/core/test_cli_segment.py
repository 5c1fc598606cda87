"""``minisam segment`` end to end on real data, and bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from minisam.checkpoints import save_official_layout
from minisam.cli.main import main
from minisam.metrics import dice
from minisam.model_config import build_sam, preset

CXR = "cxr_lung_montgomery_shenzhen/images/MCUCXR_0003_0.png"
CT = "totalsegmentator_example/example_ct_sm.nii.gz"  # 122 x 101 x 30 voxels
TINY = ["--model", "random:tiny", "--quiet"]


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_segment_chest_xray_with_a_box(shared_data: Path, tmp_path: Path) -> None:
    mask, overlay = tmp_path / "lung.png", tmp_path / "overlay.png"
    code = main(
        [
            "segment",
            str(shared_data / CXR),
            "--box",
            "60",
            "60",
            "250",
            "450",
            "--output",
            str(mask),
            "--overlay",
            str(overlay),
            *TINY,
        ]
    )
    assert code == 0
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
    assert written.shape == (512, 512) and set(np.unique(written)) <= {0, 255}
    picture = sitk.ReadImage(str(overlay))
    assert picture.GetSize() == (512, 512) and picture.GetNumberOfComponentsPerPixel() == 3
    assert _files(tmp_path) == {"lung.png", "overlay.png"}


def test_segment_volume_with_propagation_keeps_geometry(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    code = main(
        [
            "segment",
            str(shared_data / CT),
            "--slice",
            "15",
            "--box",
            "30",
            "30",
            "80",
            "70",
            "--propagate",
            "--min-score",
            "0",
            "--output",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    source, written = sitk.ReadImage(str(shared_data / CT)), sitk.ReadImage(str(out))
    assert written.GetSize() == source.GetSize()
    assert written.GetOrigin() == source.GetOrigin()
    assert written.GetSpacing() == source.GetSpacing()
    assert written.GetDirection() == source.GetDirection()


def test_aliases_from_adalora_qat(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "segment",
            str(shared_data / CXR),
            "--bbox",
            "60",
            "60",
            "250",
            "450",
            "--output_mask_path",
            "m.png",
            "--save_overlay",
            *TINY,
        ]
    )
    assert code == 0
    assert _files(tmp_path) == {"m.png", "MCUCXR_0003_0_overlay.png"}


def test_a_coronal_prompt_on_a_volume(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cor.nrrd"
    # Coronal slices of this CT are (Z=30, X=122): x indexes columns i, y indexes slices k.
    code = main(
        [
            "segment",
            str(shared_data / CT),
            "--axis",
            "coronal",
            "--slice",
            "50",
            "--point",
            "60",
            "15",
            "--output",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    assert sitk.ReadImage(str(out)).GetSize() == (122, 101, 30)


def test_prompts_file_on_two_slices(shared_data: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.json"
    entries = [{"slice": 10, "box": [30, 30, 80, 70]}, {"slice": 20, "points": [[55, 50]]}]
    prompts.write_text(json.dumps(entries))
    out = tmp_path / "mask.nrrd"
    assert (
        main(
            [
                "segment",
                str(shared_data / CT),
                "--prompts",
                str(prompts),
                "--output",
                str(out),
                "--model",
                "random:tiny",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "prompted slice 10" in printed and "prompted slice 20" in printed
    assert sitk.ReadImage(str(out)).GetSize() == (122, 101, 30)


def _bad_inputs(data: Path, tmp: Path, out_dir: Path) -> list[tuple[str, list[str], str]]:
    cxr, ct = str(data / CXR), str(data / CT)
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    corrupt = tmp / "corrupt.nii.gz"
    corrupt.write_bytes(os.urandom(300))
    nan = tmp / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, np.float32)), str(nan))
    four_d = tmp / "four_d.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((2, 3, 8, 8), np.float32), isVector=False), str(four_d)
    )
    cplx = tmp / "complex.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.complex64)), str(cplx))
    cut = tmp / "cut.pth"
    save_official_layout(build_sam(preset("tiny")), cut)
    cut.write_bytes(cut.read_bytes()[:5000])
    other = tmp / "tiny_as_vitb.pth"
    save_official_layout(build_sam(preset("tiny")), other)
    not_a_dir = tmp / "file.txt"
    not_a_dir.write_text("x")
    bad_json = tmp / "bad.json"
    bad_json.write_text('[{"slice": 3, "box": [1, 2, 3, 4]},')
    twice = tmp / "twice.json"
    twice.write_text(
        json.dumps([{"slice": 3, "box": [1, 1, 5, 5]}, {"slice": 3, "points": [[2, 2]]}])
    )
    unknown_key = tmp / "unknown_key.json"
    unknown_key.write_text(json.dumps([{"slice": 3, "boxes": [1, 1, 5, 5]}]))
    off_slice = tmp / "off_slice.json"
    off_slice.write_text(
        json.dumps([{"slice": 3, "box": [1, 1, 5, 5]}, {"slice": 31, "box": [1, 1, 5, 5]}])
    )
    box = ["--box", "60", "60", "250", "450"]
    out = ["--output", str(out_dir / "m.png")]
    vol_out = ["--output", str(out_dir / "m.nii.gz")]
    return [
        ("missing image", ["segment", str(tmp / "nope.png"), *box, *out], "nope.png"),
        ("empty image", ["segment", str(empty), *box, *out], "empty.png"),
        ("corrupt volume", ["segment", str(corrupt), *box, *out], "corrupt.nii.gz"),
        (
            "NaN volume",
            [
                "segment",
                str(nan),
                "--slice",
                "1",
                "--box",
                "1",
                "1",
                "3",
                "3",
                "--output",
                str(out_dir / "m.nii.gz"),
            ],
            "nan",
        ),
        ("4D volume", ["segment", str(four_d), "--slice", "0", *box, *out], "4"),
        ("complex volume", ["segment", str(cplx), "--slice", "0", *box, *out], "complex"),
        ("box x1 < x0", ["segment", cxr, "--box", "250", "60", "60", "450", *out], "x0 <= x1"),
        ("box outside", ["segment", cxr, "--box", "60", "60", "600", "450", *out], "outside"),
        ("point off image", ["segment", cxr, "--point", "700", "10", *out], "--point 700 10"),
        (
            "negative point off image",
            ["segment", cxr, "--negative-point", "-5", "10", "--point", "5", "5", *out],
            "--negative-point -5 10",
        ),
        ("no prompt", ["segment", cxr, *out], "no prompt"),
        (
            "slice out of range",
            [
                "segment",
                ct,
                "--slice",
                "30",
                "--box",
                "1",
                "1",
                "5",
                "5",
                "--output",
                str(out_dir / "m.nii.gz"),
            ],
            "--slice 30",
        ),
        (
            "negative slice",
            [
                "segment",
                ct,
                "--slice",
                "-1",
                "--box",
                "1",
                "1",
                "5",
                "5",
                "--output",
                str(out_dir / "m.nii.gz"),
            ],
            "--slice -1",
        ),
        (
            "volume without --slice",
            ["segment", ct, "--box", "1", "1", "5", "5", "--output", str(out_dir / "m.nii.gz")],
            "--slice is required",
        ),
        (
            "unknown axis",
            [
                "segment",
                ct,
                "--axis",
                "oblique7",
                "--slice",
                "1",
                "--box",
                "1",
                "1",
                "5",
                "5",
                "--output",
                str(out_dir / "m.nii.gz"),
            ],
            "oblique7",
        ),
        ("--propagate on 2D", ["segment", cxr, *box, "--propagate", *out], "2D image"),
        ("unknown model", ["segment", cxr, *box, *out, "--model", "sam_vit_x"], "sam_vit_x"),
        (
            "missing checkpoint file",
            ["segment", cxr, *box, *out, "--model", str(tmp / "none.pth")],
            "none.pth",
        ),
        ("truncated checkpoint", ["segment", cxr, *box, *out, "--model", str(cut)], "cut.pth"),
        (
            "official weights not cached",
            ["segment", cxr, *box, *out, "--model", "sam_vit_h", "--no-download"],
            "sam_vit_h",
        ),
        (
            "output folder missing",
            ["segment", cxr, *box, "--output", str(tmp / "no" / "dir" / "m.png")],
            "no/dir",
        ),
        (
            "output under a file",
            ["segment", cxr, *box, "--output", str(not_a_dir / "m.png")],
            "file.txt",
        ),
        (
            "unsupported output suffix",
            ["segment", cxr, *box, "--output", str(out_dir / "m.jpg")],
            "m.jpg",
        ),
        (
            "3D mask as PNG",
            [
                "segment",
                ct,
                "--slice",
                "3",
                "--box",
                "1",
                "1",
                "5",
                "5",
                "--output",
                str(out_dir / "m.png"),
            ],
            "m.png",
        ),
        (
            "overlay not PNG",
            ["segment", cxr, *box, *out, "--overlay", str(out_dir / "o.nii")],
            "o.nii",
        ),
        ("unknown modality", ["segment", cxr, *box, *out, "--modality", "pet"], "pet"),
        ("min-score out of range", ["segment", cxr, *box, *out, "--min-score", "2"], "--min-score"),
        ("bad number", ["segment", cxr, "--box", "a", "1", "2", "3", *out], "invalid float"),
        (
            "prompts file not JSON",
            ["segment", ct, "--prompts", str(bad_json), *vol_out],
            "bad.json",
        ),
        (
            "slice prompted twice",
            ["segment", ct, "--prompts", str(twice), *vol_out],
            "slice 3 is prompted twice",
        ),
        (
            "unknown key in prompts",
            ["segment", ct, "--prompts", str(unknown_key), *vol_out],
            "entry 1",
        ),
        (
            "prompts file slice out of range",
            ["segment", ct, "--prompts", str(off_slice), *vol_out],
            "--slice 31",
        ),
        (
            "prompts and --box together",
            ["segment", ct, "--prompts", str(twice), *box, *vol_out],
            "--prompts",
        ),
        ("unknown device", ["segment", cxr, *box, *out, "--device", "tpu9"], "tpu9"),
    ]


def test_bad_inputs_give_one_line_and_exit_2(shared_data: Path, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (tmp_path / "out").mkdir()
    cases = _bad_inputs(shared_data, inputs, tmp_path / "out")
    assert len(cases) >= 20
    model_args = {
        "unknown model",
        "missing checkpoint file",
        "truncated checkpoint",
        "official weights not cached",
    }
    for name, argv, words in cases:
        extra = [] if name in model_args else ["--model", "random:tiny"]
        code = _exit_code([*argv, *extra, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, f"{name}: exit {code}, stderr {err!r}"
        assert len(err.splitlines()) == 1, f"{name}: {err!r}"
        assert words in err, f"{name}: {err!r}"
        assert "Traceback" not in err
        assert not list((tmp_path / "out").iterdir()), f"{name} left output behind"


def _exit_code(argv: list[str]) -> int:
    """main()'s return code, or the code of the SystemExit argparse raises for usage errors."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def test_console_script_reports_without_traceback(shared_data: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "minisam.cli.main",
            "segment",
            str(shared_data / CXR),
            "--box",
            "9",
            "9",
            "1",
            "1",
            "--output",
            str(tmp_path / "m.png"),
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("minisam segment: error: --box 9 9 1 1")
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_models_command_lists_official_names(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MINISAM_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in (
        "default",
        "litemedsam-clicks",
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "medsam_vit_b",
        "random:tiny",
    ):
        assert name in out


def test_lone_click_refined_or_raw(shared_data: Path, tmp_path: Path) -> None:
    """A single click: the default answers it again with its best candidate's box; --lone-click raw
    keeps SAM's candidate (on this held-out head Dice 0.73 raw, 0.95 refined; docs/eval/lone_click)."""
    head = shared_data / "hc18_fetal_head_us"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(head / "masks_filled/269_HC_mask.png"))) > 127
    rows, cols = np.nonzero(truth)
    click = [str(int(cols.mean())), str(int(rows.mean()))]
    scores = {}
    for mode in ("raw", "refine"):
        out = tmp_path / f"{mode}.png"
        argv = ["segment", str(head / "images/269_HC.png"), "--point", *click, "--output", str(out)]
        argv += ["--runtime", "torch", "--lone-click", mode, "--quiet"]
        assert main(argv) == 0
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
        scores[mode] = dice(mask, truth)
    assert scores["refine"] > scores["raw"] + 0.1, scores
