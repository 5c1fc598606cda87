"""``report.html`` of an evaluation folder: what a person would rather look at than read.

One self-contained HTML file (inline CSS, every picture a PNG ``data:`` URI, no script, no external
reference) written by ``minisam evaluate`` next to summary.json, with

* the run header: configurations, prompt protocol, seed, date, number of cases, failed cases;
* per (dataset, modality): the summary table of Dice, IoU, NSD and HD95 (mean, median, std and
  95 % CI, taken as they are from the summary.json payload, nothing recomputed), the paired
  Wilcoxon comparisons, a box plot of Dice per configuration (also ``plots/dice_<group>.png``) and a
  gallery of the best, median and worst case by the Dice of the first configuration, one tile per
  configuration (also ``plots/gallery_<group>.png``).

Gallery masks are recomputed, not stored. The runner keeps metrics only; rather than writing a mask
file for every case and configuration, the report runs the ~3 gallery cases per group again
through the functions the runner uses (:func:`~minisam.evaluation.cases.load_case`,
:func:`~minisam.evaluation.prompting.case_rng`, :func:`~minisam.evaluation.prompting.simulate`,
``VolumeSession.predict`` on the prompted slice) with the run's own loaded configurations. The
prompt of a case is seeded from (seed, dataset/case) only, so this reproduces the scored mask
exactly, also for rows a resumed run kept from an earlier one, at the cost of one encoder pass per
tile. For slice- and image-scored rows the redrawn mask's Dice is checked against the recorded one
and a disagreement is flagged on the tile. A 3D case is shown on its prompted slice (the largest
ground-truth area, recorded in the ``slice`` column); with ``--propagate`` that slice keeps the
prompted prediction, so the tile is exact there too, while the caption gives the volume Dice.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from minisam.atomic import atomic_output
from minisam.dataset_manifest import CaseSpec
from minisam.errors import OutputError
from minisam.evaluation import outputs, report_plots
from minisam.evaluation.pipeline import EvaluationOutcome
from minisam.evaluation.runner import CASE_ERRORS, EvaluationSettings, LoadedConfiguration
from minisam.evaluation.statistics import group_key

REPORT_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("nsd", "NSD"), ("hd95", "HD95 (mm)"))
STATS = ("mean", "median", "std", "ci_low", "ci_high")
DIGITS = 4
DICE_CHECK_TOLERANCE = 1e-4
# EvaluationSettings.multimask as the report says it (None: `--multimask auto`)
MULTIMASK_WORDS = {True: "every prompt", False: "never (one mask)", None: "lone clicks only (auto)"}


@dataclass
class Tile:
    """One configuration on one gallery case."""

    config: str
    dice: float | None
    png: bytes | None = None
    picture: np.ndarray | None = None
    note: str = ""
    mismatch: bool = False


@dataclass
class GalleryCase:
    rank: str
    case: str
    dice: float
    slice: int | None
    scope: str
    tiles: list[Tile] = field(default_factory=list)


@dataclass
class GroupSection:
    """Everything the report shows of one (dataset, modality)."""

    dataset: str
    modality: str
    entries: list[dict]
    comparisons: list[dict]
    boxplot_png: bytes
    ranked_by: str | None
    gallery: list[GalleryCase]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.dataset}_{self.modality}")


def select_gallery(rows: list[dict], config: str) -> list[tuple[str, dict]]:
    """(rank, row) of the best, median and worst ``ok`` row of ``config`` by Dice (ties: by case).

    With two cases: best and worst; with one: best.
    """
    ok = [
        r
        for r in rows
        if r["config"] == config and r["status"] == "ok" and report_plots.finite([r.get("dice")])
    ]
    ranked = sorted(ok, key=lambda r: (float(r["dice"]), str(r["case"])))
    picks = [("best", ranked[-1])] if ranked else []
    if len(ranked) > 2:
        picks.append(("median", ranked[(len(ranked) - 1) // 2]))  # the lower middle for even n
    if len(ranked) > 1:
        picks.append(("worst", ranked[0]))
    return picks


def _prompted_slice(case, loaded: LoadedConfiguration, settings: EvaluationSettings):
    """(rgb, prompt, predicted mask) of the prompted slice, as :func:`runner.evaluate_case` makes them."""
    from minisam.evaluation.prompting import case_rng, simulate
    from minisam.volume_session import VolumeSession

    loaded.prepare(case)  # the adapter the row was made with ("auto": the case's own)
    session = VolumeSession(loaded.engine, case.normalized, is_rgb=case.is_rgb)  # type: ignore[arg-type]
    rng = case_rng(settings.seed, case.spec.dataset, case.spec.case)
    prompt, prediction = simulate(
        settings.prompt,
        case.slice_truth,
        rng,
        lambda p: session.predict(0, case.slice_index, p, multimask=settings.multimask),
    )
    return session.slice_image(0, case.slice_index), prompt, prediction.mask


def _tile(row: dict | None, name: str, case, problem: str, loaded, settings) -> Tile:
    if row is None:
        return Tile(name, None, note="not evaluated")
    if row["status"] != "ok":
        return Tile(name, None, note=f"failed: {row.get('error') or ''}")
    from minisam.metrics import dice

    tile = Tile(name, row.get("dice"))
    if case is None or loaded is None:
        tile.note = f"not redrawn: {problem if case is None else 'configuration not loaded'}"
        return tile
    try:
        rgb, prompt, mask = _prompted_slice(case, loaded, settings)
    except CASE_ERRORS as error:
        tile.note = f"not redrawn: {' '.join(str(error).split())}"
        return tile
    tile.picture = report_plots.render_tile(rgb, case.slice_truth, mask, prompt)
    tile.png = report_plots.array_png(tile.picture)
    redrawn = dice(mask, case.slice_truth)
    if row.get("scope") == "volume":
        tile.note = f"volume Dice; prompted slice {redrawn:.3f}"
    elif tile.dice is None or abs(redrawn - float(tile.dice)) > DICE_CHECK_TOLERANCE:
        tile.mismatch = True
        tile.note = f"redrawn mask has Dice {redrawn:.4f}, not the recorded one"
    return tile


def build_gallery(
    rows: list[dict],
    names: list[str],
    specs: dict[tuple[str, str], CaseSpec],
    loaded: dict[str, LoadedConfiguration],
    settings: EvaluationSettings,
) -> tuple[str | None, list[GalleryCase]]:
    """(configuration ranked by, gallery cases) of one group's rows."""
    from minisam.evaluation.cases import load_case

    ranked_by = next((n for n in names if select_gallery(rows, n)), None)
    if ranked_by is None:
        return None, []
    gallery = []
    for rank, pick in select_gallery(rows, ranked_by):
        spec = specs.get((pick["dataset"], pick["case"]))
        case, problem = None, "case not in the manifests"
        if spec is not None:
            try:
                case = load_case(spec)
            except CASE_ERRORS as error:
                problem = " ".join(str(error).split())
        item = GalleryCase(
            rank, pick["case"], float(pick["dice"]), pick.get("slice"), pick.get("scope") or ""
        )
        by_config = {r["config"]: r for r in rows if r["case"] == pick["case"]}
        for name in names:
            row = by_config.get(name)
            item.tiles.append(_tile(row, name, case, problem, loaded.get(name), settings))
        gallery.append(item)
    return ranked_by, gallery


def build_sections(
    payload: dict,
    specs: list[CaseSpec],
    loaded: list[LoadedConfiguration],
    settings: EvaluationSettings,
) -> list[GroupSection]:
    """One section per (dataset, modality) of the summary, in its order."""
    names = [c["name"] for c in payload["configs"]]
    spec_map = {(s.dataset, s.case): s for s in specs}
    loaded_map = {item.config.name: item for item in loaded}
    groups: list[tuple[str, str]] = []
    for entry in payload["summary"]:
        if (entry["dataset"], entry["modality"]) not in groups:
            groups.append((entry["dataset"], entry["modality"]))
    sections = []
    for dataset, modality in groups:
        rows = [r for r in payload["cases"] if group_key(r) == (dataset, modality)]
        values = {
            n: report_plots.finite(
                [r.get("dice") for r in rows if r["config"] == n and r["status"] == "ok"]
            )
            for n in names
        }
        ranked_by, gallery = build_gallery(rows, names, spec_map, loaded_map, settings)
        sections.append(
            GroupSection(
                dataset=dataset,
                modality=modality,
                entries=[
                    e
                    for e in payload["summary"]
                    if (e["dataset"], e["modality"]) == (dataset, modality)
                ],
                comparisons=[
                    c
                    for c in payload["comparisons"]
                    if (c["dataset"], c["modality"]) == (dataset, modality)
                ],
                boxplot_png=report_plots.dice_boxplot(f"{dataset} ({modality})", values),
                ranked_by=ranked_by,
                gallery=gallery,
            )
        )
    return sections


# ---------------------------------------------------------------------------------------------
# HTML


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:78em;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
tr.first td{border-top:2px solid #999}
.meta td{text-align:left}.note{color:#555;font-size:.85em}
.gallery{display:flex;flex-direction:column;gap:.8em}
.case{border:1px solid #ddd;padding:.5em;margin:0}
.case>figcaption{font-weight:600;margin-bottom:.4em}
.tiles{display:flex;flex-wrap:wrap;gap:.6em}
.tile{margin:0;text-align:center;font-size:.85em}
.tile img{display:block;border:1px solid #999}
.failed td:last-child,.mismatch{color:#b00020}.legend span{display:inline-block;width:1em;height:.6em;margin:0 .3em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):.{DIGITS}f}"  # type: ignore[arg-type]


def p_value(value: object) -> str:
    """A p-value as shown: 4 decimals, or 2 significant digits below 0.0001."""
    if isinstance(value, int | float) and 0 < value < 1e-4:
        return f"{value:.1e}"
    return _number(value)


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    import base64

    size = f' width="{width}"' if width else ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}"{size}>'


def _head(labels: list[str], left: int) -> str:
    """A header row; the first ``left`` columns hold text (left-aligned), the others numbers."""
    cells = "".join(f"<th{' class=l' if i < left else ''}>{x}</th>" for i, x in enumerate(labels))
    return f"<tr>{cells}</tr>"


def _row(texts: list[object], numbers: str = "", attrs: str = "") -> str:
    """A body row: ``texts`` escaped and left-aligned, then the ``numbers`` cells (HTML)."""
    cells = "".join(f"<td class=l>{_e(text)}</td>" for text in texts)
    return f"<tr{attrs}>{cells}{numbers}</tr>"


def _header(payload: dict, meta: dict) -> list[str]:
    settings = payload["settings"]
    cases = {(r["dataset"], r["case"]) for r in payload["cases"]}
    failed_cases = {(f["dataset"], f["case"]) for f in payload["failed"]}
    items = [
        ("date", meta.get("date", "")),
        ("minisam", meta.get("version", "")),
        ("manifests", ", ".join(meta.get("manifests", []))),
        ("prompt protocol", settings["prompt"]),
        ("seed", settings["seed"]),
        ("NSD tolerance", f"{settings['tolerance_mm']} mm"),
        ("propagate", settings["propagate"]),
        ("best of 3 masks", MULTIMASK_WORDS.get(settings["multimask"], settings["multimask"])),
        ("bootstrap resamples", meta.get("n_boot", "")),
        ("cases", f"{len(cases)} ({len(failed_cases)} with a failed configuration)"),
        ("rows (case × configuration)", len(payload["cases"])),
    ]
    out = ["<table class=meta>"]
    out += [f"<tr><th class=l>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items]
    out += ["</table>", "<h3>Configurations</h3>", "<table class=configs>"]
    out.append(_head(["name", "model", "quant", "adapter"], left=4))
    out += [_row([c["name"], c["model"], c["quant"], c["adapter"]]) for c in payload["configs"]]
    out.append("</table>")
    out.append(f"<h3 id=failed>Failed cases ({len(failed_cases)})</h3>")
    if not payload["failed"]:
        return [*out, "<p>None.</p>"]
    out += ["<table class=failed>", _head(["dataset", "case", "configuration", "error"], left=4)]
    for f in payload["failed"]:
        texts = [f["dataset"], f["case"], f["config"], f["error"]]
        out.append(_row(texts, attrs=f' data-case="{_e(f["case"])}"'))
    out.append("</table>")
    return out


def _summary_table(section: GroupSection) -> list[str]:
    labels = ["metric", "configuration", "n", "failed", "mean", "median", "std"]
    out = ["<table class=summary>", _head([*labels, "95 % CI low", "95 % CI high"], left=2)]
    for metric, label in REPORT_METRICS:
        for i, entry in enumerate(section.entries):
            values = entry["metrics"][metric]
            where = (
                f'data-dataset="{_e(entry["dataset"])}" data-modality="{_e(entry["modality"])}" '
                f'data-config="{_e(entry["config"])}" data-metric="{metric}"'
            )
            extra = f" (+{values['n_nonfinite']} inf)" if values.get("n_nonfinite") else ""
            numbers = f"<td>{values['n']}{extra}</td><td>{entry['n_failed']}</td>" + "".join(
                f'<td {where} data-stat="{stat}">{_number(values[stat])}</td>' for stat in STATS
            )
            out.append(_row([label, entry["config"]], numbers, " class=first" if i == 0 else ""))
    out.append("</table>")
    return out


def _comparison_table(section: GroupSection) -> list[str]:
    if not section.comparisons:
        return []
    labels = ["metric", "baseline", "other", "n", "median diff", "W", "p", "r"]
    out = [
        "<h3>Paired comparisons (Wilcoxon signed-rank, two-sided)</h3>",
        "<p class=note>Each configuration against the first on the cases both evaluated; "
        "r = matched-pairs rank-biserial correlation, positive: <i>other</i> higher.</p>",
        "<table class=comparisons>",
        _head(labels, left=3),
    ]
    for c in section.comparisons:
        cells = (c["n"], _number(c["median_difference"]), f"{float(c['statistic']):g}")
        cells += (p_value(c["p_value"]), _number(c["rank_biserial"]))
        numbers = "".join(f"<td>{cell}</td>" for cell in cells)
        out.append(_row([c["metric"], c["baseline"], c["other"]], numbers))
    out.append("</table>")
    return out


def _gallery(section: GroupSection) -> list[str]:
    out = ["<h3>Gallery</h3>"]
    if section.ranked_by is None:
        return [*out, "<p>No case was evaluated.</p>"]
    out.append(
        "<p class=note>Best, median and worst case (best and worst of two) by the Dice of "
        f"<b>{_e(section.ranked_by)}</b>; Dice of each configuration under its tile. "
        "<span class=legend>Ground truth<span style='background:#00dc00'></span>prediction"
        "<span style='background:#ff4040'></span>prompt box<span style='background:#ff0'></span>"
        "</span></p><div class=gallery>"
    )
    for item in section.gallery:
        where = f", slice {item.slice}" if item.scope in ("slice", "volume") else ""
        out.append(
            f'<figure class=case data-rank="{item.rank}" data-case="{_e(item.case)}">'
            f"<figcaption>{item.rank}: {_e(item.case)}{where}</figcaption><div class=tiles>"
        )
        for tile in item.tiles:
            picture = _img(tile.png, f"{item.case} {tile.config}") if tile.png else ""
            note = ""
            if tile.note:
                css = "note mismatch" if tile.mismatch else "note"
                note = f"<br><span class='{css}'>{_e(tile.note)}</span>"
            out.append(
                f"<figure class=tile>{picture}<figcaption>{_e(tile.config)}: Dice "
                f"{_number(tile.dice)}{note}</figcaption></figure>"
            )
        out.append("</div></figure>")
    out.append("</div>")
    return out


SCOPES = {
    "image": "the whole image",
    "slice": "the prompted slice (largest ground-truth area along array axis 0)",
    "volume": "the volume propagated from the prompted slice",
}


def _scope_note(payload: dict, section: GroupSection) -> str:
    rows = [
        r
        for r in payload["cases"]
        if group_key(r) == (section.dataset, section.modality) and r["status"] == "ok"
    ]
    cases = {
        r["case"] for r in payload["cases"] if group_key(r) == (section.dataset, section.modality)
    }
    scopes = sorted({str(r.get("scope")) for r in rows})
    where = "; ".join(SCOPES.get(scope, scope) for scope in scopes) or "–"
    return f"{len(cases)} cases; metrics on {where}."


def render_html(payload: dict, sections: list[GroupSection], meta: dict) -> str:
    """The report text (``meta``: date, version, manifests, n_boot)."""
    out = [
        "<!DOCTYPE html>",
        "<html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        "<title>MiniSAM evaluation report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>MiniSAM evaluation report</h1>",
        *_header(payload, meta),
        "<p class=note>Statistics over the finite values of the cases evaluated (an empty "
        "prediction has HD95 = inf, counted apart); mean with a percentile-bootstrap 95 % CI. "
        "Numbers as in summary.json; more metrics (mask SSIM, predicted IoU, timings) in "
        "summary.md.</p>",
    ]
    for section in sections:
        out.append(
            f"<h2 id='{_e(section.slug)}'>{_e(section.dataset)} ({_e(section.modality)})</h2>"
        )
        out.append(f"<p class=note>{_e(_scope_note(payload, section))}</p>")
        out += _summary_table(section)
        out += _comparison_table(section)
        out.append("<h3>Dice per configuration</h3>")
        out.append(_img(section.boxplot_png, f"Dice box plot {section.dataset}"))
        out += _gallery(section)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _write_png(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _sheet(section: GroupSection) -> bytes:
    rows = [
        (
            f"{item.rank}: {item.case}"
            + (f", slice {item.slice}" if item.scope in ("slice", "volume") else ""),
            [(f"{t.config}: Dice {_number(t.dice)}", t.picture) for t in item.tiles],
        )
        for item in section.gallery
    ]
    title = (
        f"{section.dataset} ({section.modality}): best / median / worst by the Dice of "
        f"{section.ranked_by}\ngreen: ground truth, red: prediction, yellow: prompt box"
    )
    return report_plots.gallery_sheet(title, rows)


def write_report(
    outcome: EvaluationOutcome,
    settings: EvaluationSettings,
    *,
    manifests: list[str] | None = None,
    n_boot: int | None = None,
) -> Path:
    """Write ``report.html`` and ``plots/*.png`` into ``outcome.out_dir``; returns the HTML's path.

    ``outcome`` is what :func:`~minisam.evaluation.pipeline.run_evaluation` returned (its payload,
    case specs and loaded configurations).
    """
    from minisam import __version__

    folder = outcome.out_dir
    sections = build_sections(outcome.payload, outcome.specs, outcome.configurations, settings)
    pictures = {f"dice_{section.slug}.png": section.boxplot_png for section in sections}
    for section in sections:
        if section.gallery:
            pictures[f"gallery_{section.slug}.png"] = _sheet(section)
    plots = folder / "plots"
    try:
        plots.mkdir(exist_ok=True)
        for stale in [*plots.glob("dice_*.png"), *plots.glob("gallery_*.png")]:
            if stale.name not in pictures:  # a group of an earlier run on this folder
                stale.unlink()
        for name, data in pictures.items():
            _write_png(plots / name, data)
    except OSError as error:
        raise OutputError(f"--out {folder}: cannot write the report's plots ({error})") from None
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "manifests": [str(m) for m in manifests or []],
        "n_boot": n_boot if n_boot is not None else "",
    }
    path = folder / "report.html"
    outputs.write_text(path, render_html(outcome.payload, sections, meta))
    return path
