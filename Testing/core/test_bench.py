"""``minisam bench``: rows measured in subprocesses, ratios to vit_h, JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

from minisam.benchmark import markdown_table, with_ratios
from minisam.cli.main import main

REQUIRED = {
    "model",
    "quant",
    "adapter",
    "input_size",
    "encoder_ms",
    "decoder_ms",
    "weights_mb",
    "file_mb",
    "peak_rss_mb",
}


def test_bench_measures_rows_and_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--models",
        "tiny",
        "--quants",
        "fp32",
        "nf4",
        "--repeats",
        "1",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [(r["quant"], r["adapter"]) for r in rows] == [
        ("fp32", False),
        ("fp32", True),
        ("nf4", False),
        ("nf4", True),
    ]
    for row in rows:
        assert REQUIRED <= row.keys()
        assert row["encoder_ms"] > 0 and row["decoder_ms"] > 0 and row["peak_rss_mb"] > 50
    fp32, nf4 = rows[0], rows[2]
    assert nf4["encoder_weights_mb"] < 0.7 * fp32["encoder_weights_mb"]
    assert rows[1]["adapter_mb"] > 0 and rows[0]["adapter_mb"] == 0
    assert fp32["file_half_rest_mb"] is None
    assert nf4["file_half_rest_mb"] < nf4["file_mb"] < fp32["file_mb"]
    assert table.count("random:tiny") == 4


def test_ratios_are_relative_to_fp32_vit_h() -> None:
    rows = [
        {
            "model": "vit_h",
            "quant": "fp32",
            "adapter": False,
            "encoder_ms": 1000.0,
            "encoder_weights_mb": 2000.0,
        },
        {
            "model": "small",
            "quant": "nf4",
            "adapter": False,
            "encoder_ms": 40.0,
            "encoder_weights_mb": 5.0,
        },
    ]
    with_ratios(rows)
    assert rows[1]["encoder_speedup_vs_vit_h"] == 25.0
    assert rows[1]["encoder_weights_pct_of_vit_h"] == 0.25
    assert rows[0]["encoder_speedup_vs_vit_h"] == 1.0


def test_failed_row_is_reported_not_dropped() -> None:
    rows = with_ratios(
        [{"model": "tiny", "quant": "int3", "adapter": False, "error": "bad scheme"}]
    )
    assert "error: bad scheme" in markdown_table(rows)


def test_gpu_rows_get_slices_per_second_and_vram_columns() -> None:
    row = {
        "model": "default", "name": "litemedsam-clicks", "quant": "fp32", "adapter": False,
        "input_size": 256, "encoder_ms": 8.3, "decoder_ms": 9.4, "weights_mb": 39.2,
        "encoder_weights_mb": 22.9, "file_mb": 39.3, "file_half_rest_mb": None,
        "peak_rss_mb": 1607.0, "slices_per_s": 56.2, "peak_vram_mb": 316.0,
    }  # fmt: skip
    failed = {"model": "tiny", "quant": "int3", "adapter": False, "error": "bad scheme"}
    lines = markdown_table(with_ratios([row, failed])).splitlines()
    assert lines[0].endswith("| slices/s | peak VRAM MB |")
    assert lines[2].endswith("| 56.2 | 316 |")
    assert len({line.count("|") for line in lines}) == 1  # every row as wide as the header
    cpu_row = {k: v for k, v in row.items() if k not in ("slices_per_s", "peak_vram_mb")}
    assert "VRAM" not in markdown_table(with_ratios([cpu_row]))


def test_bench_bad_arguments(capsys) -> None:
    assert main(["bench", "--models", "vit_x"]) == 2
    assert "--models vit_x" in capsys.readouterr().err
    assert main(["bench", "--models", "tiny", "--repeats", "0"]) == 2
    assert main(["bench", "--models", "tiny", "--quants", "nf4:neck"]) == 2
    err = capsys.readouterr().err
    assert "--quants nf4:neck" in err and "unknown layer group 'neck'" in err
