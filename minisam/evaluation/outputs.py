"""Files of an evaluation folder, each written atomically (:func:`minisam.atomic.atomic_output`).

* ``cases.csv`` — one row per (case, configuration); columns :data:`CASE_COLUMNS` in this order
  (stable schema). Numbers use up to 10 significant digits, ``inf`` for an infinite HD95, an empty
  cell where a failed row has no value. Rewritten after every case, so it is also the resume state:
  rows with ``status`` ``ok`` are kept by the next run on the same folder, failed rows are retried.
* ``run.json`` — the settings and configurations the rows were made with; a resumed run must match.
* ``summary.json`` — :data:`SUMMARY_SCHEMA`: settings, configurations, summary, comparisons,
  failures and the case rows; non-finite numbers are ``null``.
* ``summary.md`` — the same for people.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from minisam.atomic import atomic_output, new_folders, refuse_overwriting_inputs
from minisam.errors import OutputError

CASE_COLUMNS = (
    "dataset",
    "case",
    "modality",
    "config",
    "model",
    "quant",
    "adapter",
    "prompt",
    "status",
    "error",
    "dice",
    "iou",
    "nsd",
    "hd95",
    "ssim",
    "score",
    "encoder_s",
    "decoder_s",
    "modality_used",
    "scope",
    "slice",
    "pred_pixels",
    "truth_pixels",
)
NUMERIC_COLUMNS = frozenset(CASE_COLUMNS[10:18]) | {"slice", "pred_pixels", "truth_pixels"}
SUMMARY_SCHEMA = "minisam.evaluate.summary/1"


REPORT_FILES = ("cases.csv", "run.json", "summary.json", "summary.md", "report.html", "plots")
"""What an evaluation writes into its folder (``plots`` is a folder of PNGs)."""


@contextmanager
def output_dir(path: str | os.PathLike[str], inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """The ``--out`` folder, created if needed and checked writable, for the block to fill.

    If the block raises, folders created here that are still empty are removed again, so a run
    refused for a bad model or manifest leaves no new empty folder.

    Arguments:
      path: the folder.
      inputs: the run's input files (manifests, images, labels): none may be one of
        :data:`REPORT_FILES` of the folder.

    Raises:
      OutputError: the folder cannot be created or written, or an output would replace an input.
    """
    folder = Path(path)
    refuse_overwriting_inputs([("--out", folder / name) for name in REPORT_FILES], inputs)
    with ExitStack() as stack:
        try:
            stack.enter_context(new_folders(folder))
        except OSError as error:
            raise OutputError(
                f"--out {folder}: cannot create the folder ({error.strerror})"
            ) from None
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"--out {folder}: the folder is not writable")
        try:
            with atomic_output(folder / ".write-test") as probe:
                probe.write_text("ok")
            (folder / ".write-test").unlink()
        except OSError as error:
            raise OutputError(f"--out {folder}: cannot write there ({error.strerror})") from None
        yield folder


def _format(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else format(value, ".10g")
    return str(value)


def write_cases_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` with the :data:`CASE_COLUMNS` header."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CASE_COLUMNS)
            for row in rows:
                writer.writerow([_format(row.get(column)) for column in CASE_COLUMNS])


def read_cases_csv(path: Path) -> list[dict]:
    """Rows of a cases.csv written by :func:`write_cases_csv` (numbers parsed back)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CASE_COLUMNS:
            raise OutputError(f"{path}: not a cases.csv of this version (other columns)")
        rows = []
        for raw in reader:
            row: dict = {}
            for key, text in raw.items():
                if key in NUMERIC_COLUMNS:
                    number = float(text) if text else None
                    if key in ("slice", "pred_pixels", "truth_pixels") and number is not None:
                        number = int(number)
                    row[key] = number
                else:
                    row[key] = text
            rows.append(row)
    return rows


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    """Strict JSON (no NaN/Infinity), sorted as given, atomically."""
    text = json.dumps(_json_safe(payload), indent=2, allow_nan=False)
    with atomic_output(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def summary_payload(
    settings: dict, configs: list[dict], summary: list, comparisons: list, rows: list[dict]
) -> dict:
    """The summary.json document."""
    failed = [
        {k: r.get(k) for k in ("dataset", "case", "config", "error")}
        for r in rows
        if r.get("status") != "ok"
    ]
    return {
        "schema": SUMMARY_SCHEMA,
        "settings": settings,
        "configs": configs,
        "summary": summary,
        "comparisons": comparisons,
        "failed": failed,
        "cases": [{column: row.get(column) for column in CASE_COLUMNS} for row in rows],
    }


def _num(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{digits}f}" if isinstance(value, int | float) else str(value)


def summary_markdown(payload: dict) -> str:
    """summary.md text from a :func:`summary_payload` document."""
    settings = payload["settings"]
    lines = ["# MiniSAM evaluation", ""]
    lines.append(
        f"Prompt `{settings['prompt']}`, seed {settings['seed']}, NSD tolerance "
        f"{settings['tolerance_mm']} mm, propagate {settings['propagate']}; "
        "mean with percentile-bootstrap 95 % CI over the finite values."
    )
    lines += ["", "| config | model | quant | adapter |", "|---|---|---|---|"]
    lines += [
        f"| {c['name']} | {c['model']} | {c['quant']} | {c['adapter']} |"
        for c in payload["configs"]
    ]
    for metric in ("dice", "iou", "nsd", "hd95", "ssim", "score", "encoder_s", "decoder_s"):
        lines += ["", f"## {metric}", ""]
        lines.append(
            "| dataset | modality | config | ok | failed | mean [95 % CI] | median | std |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for entry in payload["summary"]:
            m = entry["metrics"][metric]
            lines.append(
                f"| {entry['dataset']} | {entry['modality']} | {entry['config']} | "
                f"{entry['n_ok']} | {entry['n_failed']} | {_num(m['mean'])} "
                f"[{_num(m['ci_low'])}, {_num(m['ci_high'])}] | {_num(m['median'])} | "
                f"{_num(m['std'])} |"
            )
    if payload["comparisons"]:
        lines += ["", "## Paired comparisons (Wilcoxon signed-rank, two-sided)", ""]
        lines.append(
            "Effect size: matched-pairs rank-biserial r = (R+ − R−)/(R+ + R−); "
            "positive: *other* higher than *baseline*."
        )
        lines += [
            "",
            "| dataset | modality | metric | baseline | other | n | median diff | W | p | r |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in payload["comparisons"]:
            lines.append(
                f"| {c['dataset']} | {c['modality']} | {c['metric']} | {c['baseline']} | "
                f"{c['other']} | {c['n']} | {_num(c['median_difference'], 4)} | "
                f"{_num(c['statistic'], 1)} | {_num(c['p_value'], 4)} | {_num(c['rank_biserial'])} |"
            )
    lines += ["", f"## Failed ({len(payload['failed'])})", ""]
    if payload["failed"]:
        lines += ["| dataset | case | config | error |", "|---|---|---|---|"]
        for f in payload["failed"]:
            error = str(f["error"]).replace("|", "\\|")
            lines.append(f"| {f['dataset']} | {f['case']} | {f['config']} | {error} |")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
