"""``minisam quant-report``: error statistics, JSON schema, PNG plots and clean failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_files import SMALL_MODEL

from minisam.analysis.quant_error import (
    LAYER_KEYS,
    OVERALL_KEYS,
    STAT_KEYS,
    error_stats,
    quantized_weights,
)
from minisam.analysis.quant_plots import PLOT_FILES
from minisam.cli.main import main
from minisam.model_loader import load_model
from minisam.quantization import (
    dequantize_payload,
    encoder_linears,
    layer_payload,
    quantize_model,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOP_KEYS = {"schema", "model", "model_name", "scheme", "overall", "layers", "plots"}


def _report(tmp_path_factory: pytest.TempPathFactory, quant: str) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("report") / quant.replace(":", "_").replace("+", "_")
    code = main(
        ["quant-report", "--model", "random:tiny", "--quant", quant, "--out", str(out)]
        + ["--max-points", "5000"]
    )
    assert code == 0
    return out, json.loads((out / "quant_error.json").read_text()), quant


@pytest.fixture(scope="module")
def nf4_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    return _report(tmp_path_factory, "nf4")


@pytest.fixture(scope="module")
def int8_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    return _report(tmp_path_factory, "int8")


def test_nf4_error_larger_than_int8(nf4_report, int8_report) -> None:
    nf4, int8 = nf4_report[1]["overall"], int8_report[1]["overall"]
    assert nf4["rel_error"] > 3 * int8["rel_error"] > 0
    assert nf4["max_abs_error"] > int8["max_abs_error"]
    assert nf4["pearson_r"] < int8["pearson_r"]
    for a, b in zip(nf4_report[1]["layers"], int8_report[1]["layers"], strict=True):
        assert a["name"] == b["name"] and a["rel_error"] > b["rel_error"]


def test_json_schema_keys_are_stable(nf4_report, int8_report) -> None:
    for _, report, quant in (nf4_report, int8_report):
        assert set(report) == TOP_KEYS
        assert report["schema"] == "minisam.quant_report/1"
        assert report["model"] == "random:tiny" and report["scheme"] == f"{quant}:attn,mlp"
        assert list(report["overall"]) == list(OVERALL_KEYS)
        assert report["overall"]["kind"] == quant
        assert all(list(layer) == list(LAYER_KEYS) for layer in report["layers"])
        assert {layer["kind"] for layer in report["layers"]} == {quant}
        assert report["plots"] == list(PLOT_FILES.values())
        assert report["overall"]["n"] == sum(layer["n"] for layer in report["layers"])


def test_int8_correlation_close_to_one(int8_report) -> None:
    report = int8_report[1]
    assert report["overall"]["pearson_r"] > 0.95
    assert all(layer["pearson_r"] > 0.95 for layer in report["layers"])
    # Row-wise absmax int8: the error is bounded by half a step of the row's scale.
    assert report["overall"]["rel_error"] < 0.02


def test_one_row_per_encoder_linear(nf4_report, tmp_path) -> None:
    linears = encoder_linears(load_model("random:tiny").sam)
    assert [layer["name"] for layer in nf4_report[1]["layers"]] == list(linears)
    assert nf4_report[1]["overall"]["n_layers"] == len(linears)
    # A partial scheme reports only its group.
    out = tmp_path / "mlp"
    assert (
        main(["quant-report", "--model", "random:tiny", "--quant", "int8:mlp", "--out", str(out)])
        == 0
    )
    rows = json.loads((out / "quant_error.json").read_text())["layers"]
    assert [r["name"] for r in rows] == [n for n, (g, _) in linears.items() if g == "mlp"]


def test_pngs_are_written_and_valid(nf4_report) -> None:
    out = nf4_report[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["quant_error.json", *PLOT_FILES.values()]
    )
    for name in PLOT_FILES.values():
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_MAGIC, name
    assert not list(out.parent.glob(".*tmp-*")), "staging folder left behind"


def test_stdout_table(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert (
        main(["quant-report", "--model", "random:tiny", "--quant", "nf4", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 + 5  # header, rule, overall, worst 5
    assert "**overall**" in table[2]
    report = json.loads((out / "quant_error.json").read_text())
    worst = max(report["layers"], key=lambda r: r["rel_error"])
    assert worst["name"].removeprefix("image_encoder.") in table[3]


def test_relative_error_matches_direct_dequantization(nf4_report) -> None:
    report = nf4_report[1]
    model = load_model("random:tiny")
    name = "image_encoder.blocks.1.mlp.lin1"
    fp32 = encoder_linears(model.sam)[name][1].weight.detach().double().clone()
    quantize_model(model, "nf4")
    kind, payload = layer_payload(encoder_linears(model.sam)[name][1])
    assert kind == "nf4"
    quant = dequantize_payload(kind, payload).double()
    direct = float((quant - fp32).norm() / fp32.norm())
    row = next(r for r in report["layers"] if r["name"] == name)
    assert row["rel_error"] == pytest.approx(direct, rel=1e-9)
    assert row["max_abs_error"] == pytest.approx(float((quant - fp32).abs().max()), rel=1e-6)


def test_error_stats_by_hand() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=20_000)
    e = rng.normal(scale=0.01, size=w.size)
    s = error_stats(w, w + e)
    assert set(s) == set(STAT_KEYS) and s["n"] == w.size
    assert s["rel_error"] == pytest.approx(np.linalg.norm(e) / np.linalg.norm(w))
    assert s["error_std"] == pytest.approx(0.01, rel=0.03)
    assert abs(s["skewness"]) < 0.1 and abs(s["excess_kurtosis"]) < 0.2
    assert s["qq_r"] > 0.999 and s["qq_slope"] == pytest.approx(0.01, rel=0.03)
    assert abs(s["abs_error_vs_abs_weight_spearman"]) < 0.05
    # Error proportional to |w|: slope recovered, rank correlation perfect.
    t = error_stats(w, w + 0.1 * w)
    assert t["abs_error_vs_abs_weight_slope"] == pytest.approx(0.1)
    assert t["abs_error_vs_abs_weight_spearman"] == pytest.approx(1.0)
    # Constant input: undefined values are NaN, not exceptions.
    z = error_stats(np.zeros(10), np.zeros(10))
    assert math.isnan(z["rel_error"]) and math.isnan(z["pearson_r"])


def _fails_cleanly(capsys, tmp_path: Path, args: list[str], must_mention: str) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["quant-report", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("minisam quant-report: error:") and must_mention in lines[0]
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no DIR, no staging folder


def test_missing_checkpoint_exits_2(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "nope.safetensors"
    _fails_cleanly(
        capsys, tmp_path, ["--model", str(missing), "--quant", "nf4", "--out", str(out)], "nope"
    )


def test_corrupt_checkpoint_exits_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    out = tmp_path / "nested" / "out"
    _fails_cleanly(
        capsys, tmp_path, ["--model", str(bad), "--quant", "int8", "--out", str(out)], "bad"
    )


@pytest.mark.parametrize("scheme", ["nf5", "nf4:conv", "nf4:mlp+int8:mlp", "fp32", ""])
def test_bad_scheme_exits_2(tmp_path, capsys, scheme: str) -> None:
    out = tmp_path / "out"
    _fails_cleanly(
        capsys, tmp_path, ["--model", "random:tiny", "--quant", scheme, "--out", str(out)], "scheme"
    )


def test_out_is_a_file_exits_2(tmp_path, capsys) -> None:
    target = tmp_path / "report"
    target.write_text("keep me")
    _fails_cleanly(
        capsys,
        tmp_path,
        ["--model", "random:tiny", "--quant", "nf4", "--out", str(target)],
        "--out",
    )
    assert target.read_text() == "keep me"
    below = target / "sub"
    _fails_cleanly(
        capsys, tmp_path, ["--model", "random:tiny", "--quant", "nf4", "--out", str(below)], "--out"
    )


def test_bad_max_points_exits_2(tmp_path, capsys) -> None:
    args = ["--model", "random:tiny", "--quant", "nf4", "--out", str(tmp_path / "o")]
    _fails_cleanly(capsys, tmp_path, [*args, "--max-points", "0"], "--max-points")


def test_failed_write_leaves_nothing(tmp_path, capsys, monkeypatch) -> None:
    import minisam.analysis.quant_plots as plots

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_layers", broken)
    out = tmp_path / "a" / "b" / "report"
    _fails_cleanly(
        capsys, tmp_path, ["--model", "random:tiny", "--quant", "int8", "--out", str(out)], "space"
    )


def test_existing_folder_is_updated(tmp_path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert (
        main(["quant-report", "--model", "random:tiny", "--quant", "int8", "--out", str(out)]) == 0
    )
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "quant_error.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_cli_subprocess_headless(tmp_path) -> None:
    """The real entry point without a display, an interactive backend asked for: plots still work."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MPLBACKEND="TkAgg", MPLCONFIGDIR=str(tmp_path / "mpl"))
    command = [sys.executable, "-m", "minisam.cli.main", "quant-report", "--model", "random:tiny"]
    ok = subprocess.run(
        [*command, "--quant", "int8", "--out", str(tmp_path / "ok")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ok" / PLOT_FILES["qq"]).read_bytes()[:8] == PNG_MAGIC
    bad = subprocess.run(
        [*command, "--quant", "int4", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "int4" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_default_model_nf4_error_larger_than_int8() -> None:
    rel = {}
    for kind in ("nf4", "int8"):  # the attention linears only, to keep the test short
        layers = quantized_weights(load_model(SMALL_MODEL), f"{kind}:attn")
        fp32 = np.concatenate([lw.fp32 for lw in layers]).astype(np.float64)
        quant = np.concatenate([lw.quantized for lw in layers]).astype(np.float64)
        rel[kind] = float(np.linalg.norm(quant - fp32) / np.linalg.norm(fp32))
    assert rel["nf4"] > 3 * rel["int8"] > 0
