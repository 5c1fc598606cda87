"""``minisam evaluate``: schemas, one row per (case, config), determinism, resume, Wilcoxon, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from minisam.cli.main import main
from minisam.evaluation import runner
from minisam.evaluation.outputs import CASE_COLUMNS, SUMMARY_SCHEMA
from minisam.evaluation.statistics import paired_wilcoxon

CXR = "cxr_lung_montgomery_shenzhen"
CASES = ["MCUCXR_0003_0", "CHNCXR_0001_0", "CHNCXR_0003_0"]
CONFIGS = ["--config", "fp32=default", "--config", "nf4=default,quant=nf4"]
METRICS = ["dice", "iou", "nsd", "hd95", "ssim", "score"]


def _manifest(folder: Path, shared_data: Path, rows: list[tuple[str, str]]) -> Path:
    """A manifest CSV in ``folder`` whose relative paths go through a ``data`` symlink."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "data"
    if not link.exists():
        link.symlink_to(shared_data / CXR, target_is_directory=True)
    path = folder / "cxr.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "modality"])
        writer.writerows([(image, label, "xray") for image, label in rows])
    return path


def _good_rows() -> list[tuple[str, str]]:
    return [(f"data/images/{c}.png", f"data/masks/{c}.png") for c in CASES]


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def first_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    manifest = _manifest(root, shared_data, _good_rows())
    code = main(
        ["evaluate", "--manifest", str(manifest), "--out", str(root / "out"), *CONFIGS, "--quiet"]
    )
    assert code == 0
    return root


def test_cases_csv_schema_and_one_row_per_case_and_config(first_run: Path) -> None:
    with open(first_run / "out" / "cases.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == CASE_COLUMNS
    assert header[:4] == ["dataset", "case", "modality", "config"]
    rows = _read(first_run / "out" / "cases.csv")
    assert sorted((r["case"], r["config"]) for r in rows) == sorted(
        (c, k) for c in CASES for k in ("fp32", "nf4")
    )
    assert all(r["status"] == "ok" and r["quant"] == r["config"] for r in rows)
    for row in rows:
        assert 0.5 < float(row["dice"]) <= 1 and 0 < float(row["iou"]) <= float(row["dice"])
        assert 0 <= float(row["nsd"]) <= 1 and 0 <= float(row["hd95"]) < 512
        assert float(row["encoder_s"]) > 0 and float(row["decoder_s"]) > 0


def test_summary_json_schema_and_confidence_interval(first_run: Path) -> None:
    payload = json.loads((first_run / "out" / "summary.json").read_text())
    assert payload["schema"] == SUMMARY_SCHEMA
    assert set(payload) == {
        "schema",
        "settings",
        "configs",
        "summary",
        "comparisons",
        "failed",
        "cases",
    }
    assert [c["name"] for c in payload["configs"]] == ["fp32", "nf4"]
    assert payload["failed"] == [] and len(payload["cases"]) == 6
    assert [(e["dataset"], e["modality"], e["config"]) for e in payload["summary"]] == [
        ("cxr", "xray", "fp32"),
        ("cxr", "xray", "nf4"),
    ]
    for entry in payload["summary"]:
        dice = entry["metrics"]["dice"]
        values = [float(c["dice"]) for c in payload["cases"] if c["config"] == entry["config"]]
        assert dice["n"] == 3 and math.isclose(dice["mean"], np.mean(values))
        assert dice["ci_low"] <= dice["mean"] <= dice["ci_high"]
        assert dice["ci_low"] < dice["ci_high"]
        assert min(values) <= dice["ci_low"] and dice["ci_high"] <= max(values)
    metrics = {c["metric"] for c in payload["comparisons"]}
    assert {"dice", "nsd", "hd95"} <= metrics
    assert all(c["baseline"] == "fp32" and c["other"] == "nf4" for c in payload["comparisons"])
    assert "## Paired comparisons" in (first_run / "out" / "summary.md").read_text()


def test_two_runs_give_identical_metrics(first_run: Path) -> None:
    out = first_run / "again"
    manifest = first_run / "cxr.csv"
    assert (
        main(["evaluate", "--manifest", str(manifest), "--out", str(out), *CONFIGS, "--quiet"]) == 0
    )
    first, second = _read(first_run / "out" / "cases.csv"), _read(out / "cases.csv")
    assert [[r[m] for m in METRICS] for r in first] == [[r[m] for m in METRICS] for r in second]
    one = json.loads((first_run / "out" / "summary.json").read_text())["summary"]
    two = json.loads((out / "summary.json").read_text())["summary"]
    assert [e["metrics"]["dice"] for e in one] == [e["metrics"]["dice"] for e in two]


def test_resume_skips_rows_already_done(first_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = first_run / "resume"
    manifest = first_run / "cxr.csv"
    assert (
        main(["evaluate", "--manifest", str(manifest), "--out", str(out), *CONFIGS, "--quiet"]) == 0
    )
    rows = _read(out / "cases.csv")
    kept = [r for r in rows if not (r["case"] == CASES[1] and r["config"] == "nf4")]
    with open(out / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CASE_COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
    calls: list[tuple[str, str]] = []
    real = runner.evaluate_case

    def counting(case, loaded, settings):
        calls.append((case.spec.case, loaded.config.name))
        return real(case, loaded, settings)

    monkeypatch.setattr(runner, "evaluate_case", counting)
    assert (
        main(["evaluate", "--manifest", str(manifest), "--out", str(out), *CONFIGS, "--quiet"]) == 0
    )
    assert calls == [(CASES[1], "nf4")]
    untimed = [c for c in CASE_COLUMNS if not c.endswith("_s")]
    again = _read(out / "cases.csv")
    assert [[r[c] for c in untimed] for r in again] == [[r[c] for c in untimed] for r in rows]
    assert [r["encoder_s"] for r in again if r is not again[3]] == [r["encoder_s"] for r in kept]
    # another prompt protocol on the same folder is refused instead of mixing results
    code = main(
        [
            "evaluate",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            *CONFIGS,
            "--quiet",
            "--prompt",
            "points:2",
        ]
    )
    assert code == 2


def test_wilcoxon_equals_scipy_on_a_fixed_pair() -> None:
    x = [12.0, 7.0, 15.0, 9.0, 20.0, 4.0, 11.0, 14.0]  # exact differences: ties stay ties
    y = [10.0, 8.0, 8.0, 1.0, 18.0, 6.0, 7.0, 8.0]
    expected = stats.wilcoxon(x, y)
    result = paired_wilcoxon(x, y)
    assert result["statistic"] == pytest.approx(float(expected.statistic))
    assert result["p_value"] == pytest.approx(float(expected.pvalue))
    assert result["n"] == 8 and result["n_nonzero"] == 8
    # differences +2 -1 +7 +8 +2 -2 +4 +6: |d| ranks 3,1,7,8,3,3,5,6 -> R- = 4
    assert result["rank_biserial"] == pytest.approx((32 - 4) / 36)
    assert paired_wilcoxon(y, x)["rank_biserial"] == pytest.approx(-(32 - 4) / 36)


def test_bad_cases_are_failed_rows_others_evaluated(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "small_label.png"
    Image.new("L", (256, 256), 255).save(small)
    empty = tmp_path / "empty_label.png"
    Image.new("L", (512, 512), 0).save(empty)
    rows = [
        (f"data/images/{CASES[0]}.png", f"data/masks/{CASES[0]}.png"),
        ("data/images/NOPE_0000_0.png", f"data/masks/{CASES[1]}.png"),
        (f"data/images/{CASES[1]}.png", "small_label.png"),
        (f"data/images/{CASES[2]}.png", "empty_label.png"),
    ]
    manifest = _manifest(tmp_path, shared_data, rows)
    out = tmp_path / "out"
    code = main(["evaluate", "--manifest", str(manifest), "--out", str(out), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    problems = [line for line in err if "failed:" in line]
    assert len(problems) == 3
    assert "NOPE_0000_0" in problems[0] and "missing" in problems[0]
    assert CASES[1] in problems[1] and "(256, 256)" in problems[1]
    assert CASES[2] in problems[2] and "no foreground" in problems[2]
    table = _read(out / "cases.csv")
    assert [(r["case"], r["status"]) for r in table] == [
        (CASES[0], "ok"),
        ("NOPE_0000_0", "failed"),
        (CASES[1], "failed"),
        (CASES[2], "failed"),
    ]
    assert float(table[0]["dice"]) > 0.5 and all(r["error"] for r in table[1:])
    payload = json.loads((out / "summary.json").read_text())
    assert [f["case"] for f in payload["failed"]] == ["NOPE_0000_0", CASES[1], CASES[2]]
    assert sum(e["n_failed"] for e in payload["summary"]) == 3
    assert "NOPE_0000_0" in (out / "summary.md").read_text()


def test_unwritable_output_is_one_line_and_exit_2(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(tmp_path, shared_data, _good_rows()[:1])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["evaluate", "--manifest", str(manifest), "--out", str(blocker / "out"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]


CT = "totalsegmentator_example/example_ct_sm.nii.gz"  # no DICOM tag: the preset decides
SEG = "totalsegmentator_example/example_seg.nii.gz"


def test_auto_adapter_is_chosen_per_case_by_family(
    shared_data: Path, tmp_path: Path, ct_adapter_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adapter=auto: the CT adapter for a ct-lung case, the base model for a raw one (as ``minisam
    segment --adapter auto`` does); evaluate used to refuse "auto"."""
    monkeypatch.setenv("MINISAM_ADAPTERS", str(ct_adapter_library))
    cases = {"lung": "ct-lung", "raw": "raw", "lung_again": "ct-lung"}
    manifest = tmp_path / "ct.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "label_value", "modality", "case"])
        for case, preset in cases.items():
            writer.writerow([shared_data / CT, shared_data / SEG, 5, preset, case])
    out = tmp_path / "out"
    configs = ["--config", "auto=default,adapter=auto", "--config", "base=default"]
    command = ["evaluate", "--manifest", str(manifest), "--out", str(out), *configs, "--quiet"]
    assert main(command) == 0
    rows = {(r["case"], r["config"]): r for r in _read(out / "cases.csv")}
    assert [r["status"] for r in rows.values()] == ["ok"] * 6
    used = [rows[(case, "auto")]["adapter"] for case in cases]
    assert used == ["auto:ct_test", "auto:none", "auto:ct_test"]
    # Switched back and forth: the base model is really back for the raw case, the adapter after it.
    assert rows[("raw", "auto")]["dice"] == rows[("raw", "base")]["dice"]
    for case in ("lung", "lung_again"):
        assert rows[(case, "auto")]["dice"] != rows[(case, "base")]["dice"]


def test_unknown_modality_in_a_manifest_is_refused(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Evaluation used to guess silently where training refused: both refuse it now, in one line."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,label,modality\n{shared_data / CT},{shared_data / SEG},DX\n")
    code = main(
        ["evaluate", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "m.csv row 1: unknown modality 'DX'" in err[0]


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ([], [False, False]),
        (["--multimask"], [True, True]),
        (["--multimask", "auto"], [True, False]),
    ],
)
def test_multimask_protocols(
    first_run: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], expected: list[bool]
) -> None:
    """Two clicks per case: best of 3 never, for every click, or (auto) for the lone first click only,
    as `minisam segment` and the Slicer effect answer."""
    from minisam.engine import SamEngine

    asked: list[bool] = []
    real = SamEngine.predict

    def recording(self, embedding, prompt, multimask=None):
        prediction = real(self, embedding, prompt, multimask=multimask)
        asked.append(len(prediction.scores) >= 3)  # a refined lone click: 4
        return prediction

    monkeypatch.setattr(SamEngine, "predict", recording)
    out = first_run / f"multimask_{'_'.join(flag) or 'none'}"
    argv = ["evaluate", "--manifest", str(first_run / "cxr.csv"), "--out", str(out)]
    argv += ["--config", "fp32=default", "--prompt", "clicks:2", "--quiet", "--no-report", *flag]
    assert main(argv) == 0
    # per case: the first click, then the corrective one (a perfect first mask stops after one)
    assert asked[:2] == expected, asked
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["multimask"] == {0: False, 1: True, 2: None}[len(flag)]
