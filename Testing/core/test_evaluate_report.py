"""report.html of ``minisam evaluate``: made headless (Agg canvas), self-contained, numbers equal to summary.json,
best/median/worst gallery with redrawn masks that match the scores, failures listed, resume."""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from minisam.cli.main import build_parser, main
from minisam.evaluation.outputs import CASE_COLUMNS
from minisam.evaluation.prompting import parse_prompt_mode
from minisam.evaluation.report import build_sections, p_value, render_html, select_gallery
from minisam.evaluation.report_plots import figure
from minisam.evaluation.runner import EvaluationSettings

CXR = "cxr_lung_montgomery_shenzhen"
CASES = ["MCUCXR_0003_0", "CHNCXR_0001_0"]  # two cases keep it short: best and worst
MISSING = "NOPE_0000_0"
CONFIGS = ["--config", "fp32=default"]  # one configuration keeps it short; comparisons: below
DATA_URI = '<img src="data:image/png;base64,'


def _arguments(manifest: Path, out: Path) -> list[str]:
    return ["evaluate", "--manifest", str(manifest), "--out", str(out), *CONFIGS, "--quiet"]


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 CXR cases and one with a missing image, default model; every PNG the report's
    matplotlib figures write is counted on the Agg canvas (headless, whatever the backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    root = tmp_path_factory.mktemp("report")
    (root / "data").symlink_to(shared_data / CXR, target_is_directory=True)
    rows = [(f"data/images/{c}.png", f"data/masks/{c}.png") for c in CASES]
    rows.insert(1, (f"data/images/{MISSING}.png", f"data/masks/{CASES[0]}.png"))
    with open(root / "cxr.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "modality"])
        writer.writerows([(image, label, "xray") for image, label in rows])
    printed: list[object] = []
    real = FigureCanvasAgg.print_png

    @functools.wraps(real)  # savefig passes only the arguments print_png's signature takes
    def counting(canvas, *args, **kwargs):
        printed.append(canvas)
        return real(canvas, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FigureCanvasAgg, "print_png", counting)
        code = main([*_arguments(root / "cxr.csv", root / "out"), "--bootstrap", "100"])
    assert code == 1  # the missing image
    # box plot and gallery sheet, both through the Agg canvas (savefig may print a figure twice)
    assert len({id(canvas) for canvas in printed}) == 2
    if "matplotlib.pyplot" in sys.modules:  # imported by monai, not by the report
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []  # no pyplot figure made
    return root


def _html(run: Path) -> str:
    return (run / "out" / "report.html").read_text(encoding="utf-8")


def _payload(run: Path) -> dict:
    return json.loads((run / "out" / "summary.json").read_text())


def test_report_is_self_contained_with_one_png_per_plot_and_tile(run: Path) -> None:
    text = _html(run)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for external in ('src="http', "src='http", "href=", "<script", "<link", "url(", "@import"):
        assert external not in text
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert text.count("<img") == text.count(DATA_URI) == len(images)
    assert len(images) == 1 + len(CASES)  # one box plot, 2 gallery cases × 1 configuration
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as picture:
            assert picture.format == "PNG" and min(picture.size) > 50
    plots = sorted(p.name for p in (run / "out" / "plots").iterdir())
    assert plots == ["dice_cxr_xray.png", "gallery_cxr_xray.png"]
    with Image.open(run / "out" / "plots" / "dice_cxr_xray.png") as picture:
        assert picture.format == "PNG"


def test_table_numbers_equal_summary_json(run: Path) -> None:
    text = _html(run)
    cells = {
        (m["dataset"], m["config"], m["metric"], m["stat"]): m["value"]
        for m in re.finditer(
            r'<td data-dataset="(?P<dataset>[^"]*)" data-modality="[^"]*" '
            r'data-config="(?P<config>[^"]*)" data-metric="(?P<metric>\w+)" '
            r'data-stat="(?P<stat>\w+)">(?P<value>[^<]*)</td>',
            text,
        )
    }
    payload = _payload(run)
    expected = {}
    for entry in payload["summary"]:
        for metric in ("dice", "iou", "nsd", "hd95"):
            for stat in ("mean", "median", "std", "ci_low", "ci_high"):
                value = entry["metrics"][metric][stat]
                key = (entry["dataset"], entry["config"], metric, stat)
                expected[key] = "–" if value is None else f"{value:.4f}"
    assert len(expected) == 4 * 5 and cells == expected
    assert payload["comparisons"] == [] and "Paired comparisons" not in text


def test_gallery_has_best_and_worst_with_matching_redrawn_masks(run: Path) -> None:
    text = _html(run)
    ok = [c for c in _payload(run)["cases"] if c["config"] == "fp32" and c["status"] == "ok"]
    ranked = sorted(ok, key=lambda c: c["dice"])
    for rank, case in (("best", ranked[-1]), ("worst", ranked[0])):
        assert f'data-rank="{rank}" data-case="{case["case"]}"' in text
        assert f"fp32: Dice {case['dice']:.4f}" in text
    assert text.index('data-rank="best"') < text.index('data-rank="worst"')
    assert "mismatch" not in text.split("<div class=gallery>")[1]  # no redrawn mask disagrees
    assert "not redrawn" not in text


def test_failed_case_is_listed(run: Path) -> None:
    text = _html(run)
    header = text.split("<h2")[0]
    assert "Failed cases (1)" in header and "3 (1 with a failed configuration)" in header
    failed = re.findall(r'<tr data-case="([^"]+)">.*?</tr>', header)
    assert failed == [MISSING]  # one row per configuration
    assert "is missing" in header
    assert MISSING not in text.split("<div class=gallery>")[1]


def test_resumed_run_gives_the_same_report(run: Path) -> None:
    out = run / "resumed"
    shutil.copytree(run / "out", out)
    with open(out / "cases.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if (r["case"], r["config"]) != (CASES[1], "fp32")]
    with open(out / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CASE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    assert main([*_arguments(run / "cxr.csv", out), "--bootstrap", "100"]) == 1

    def undated(text: str) -> str:
        return re.sub(r"<tr><th class=l>date</th><td>[^<]*</td></tr>", "", text)

    assert undated((out / "report.html").read_text()) == undated(_html(run))


def test_comparisons_and_cases_that_cannot_be_redrawn(run: Path) -> None:
    payload = _payload(run)
    comparison = {"dataset": "cxr", "modality": "xray", "metric": "dice", "baseline": "fp32"}
    comparison.update(other="b", n=2, median_difference=0.01, statistic=0.0, rank_biserial=1.0)
    payload["comparisons"] = [dict(comparison, p_value=3e-6)]
    settings = EvaluationSettings(prompt=parse_prompt_mode("box"))
    sections = build_sections(payload, specs=[], loaded=[], settings=settings)  # no models
    text = render_html(payload, sections, {"date": "today"})
    assert "Paired comparisons" in text and "<td>3.0e-06</td>" in text
    assert p_value(0.25) == "0.2500" and p_value(None) == "–"
    assert text.count("not redrawn: case not in the manifests") == len(CASES)
    assert text.count(DATA_URI) == 1  # the box plot only


def test_report_flag_and_agg_canvas() -> None:
    parser = build_parser()
    base = ["evaluate", "--manifest", "m.csv", "--out", "o"]
    assert parser.parse_args(base).report is True
    assert parser.parse_args([*base, "--no-report"]).report is False
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    assert isinstance(figure((1, 1)).canvas, FigureCanvasAgg)


def test_gallery_picks_best_median_worst_of_the_ok_rows() -> None:
    def row(case: str, dice: float | None, status: str = "ok", config: str = "a") -> dict:
        return {"case": case, "dice": dice, "status": status, "config": config}

    rows = [
        row("c", 0.5),
        row("a", 0.9),
        row("x", None, "failed"),
        row("b", 0.7),
        row("d", 0.1),
        row("e", 0.99, config="b"),
    ]
    picks = [(rank, r["case"]) for rank, r in select_gallery(rows, "a")]
    assert picks == [("best", "a"), ("median", "c"), ("worst", "d")]
    two = [(rank, r["case"]) for rank, r in select_gallery([row("a", 0.2), row("b", 0.2)], "a")]
    assert two == [("best", "b"), ("worst", "a")]
    assert [r["case"] for _, r in select_gallery([row("a", 0.3)], "a")] == ["a"]
    assert select_gallery([row("x", None, "failed")], "a") == []


def test_header_says_which_masks_were_kept(run: Path) -> None:
    # the fixture's run keeps one mask per prompt (no --multimask)
    assert "<th class=l>best of 3 masks</th><td>never (one mask)</td>" in _html(run)
