"""Read a dataset manifest: CSV with ``image``, ``label`` (relative to the CSV), optional
``label_value`` (default: any non-zero), ``modality`` (a normalisation preset of
``minisam.modality.PRESET_CHOICES``; default auto), ``case`` and ``dataset`` columns.

Only the manifest's own structure is checked here (columns, empty cells, label values, presets);
missing files and geometry problems belong to single cases and are reported per case by :mod:`minisam.evaluation.cases`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from minisam.errors import InputError
from minisam.modality import AUTO, check_preset

REQUIRED_COLUMNS = ("image", "label")


@dataclass(frozen=True)
class CaseSpec:
    """One manifest row, paths resolved against the manifest's folder."""

    case: str
    dataset: str
    image: Path
    label: Path
    label_value: float | None
    modality: str  # a normalisation preset, or "auto"
    row: int  # 1-based data row number in the manifest (header excluded)


def _parse_label_value(text: str, where: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where}: label_value {text!r} is not a number") from None


def _parse_preset(text: str, where: str) -> str:
    try:
        return check_preset((text or "").strip() or AUTO)
    except InputError as error:
        raise InputError(f"{where}: {error}") from None


def _default_case_name(row: dict) -> str:
    """The image's file name without suffix, plus the label value when one is given (one image may
    be several cases: liver and spleen of the same CT)."""
    stem = Path((row.get("image") or "").strip()).name.split(".")[0]
    value = (row.get("label_value") or "").strip()
    return f"{stem}_label{value}" if value else stem


def read_manifest(path: str | os.PathLike[str]) -> list[CaseSpec]:
    """Case specs of a manifest CSV, in file order.

    The case name is the ``case`` column, else the image file name without its suffix and with
    ``_label<value>`` when a label value is given (the image path as written when two rows would still
    share a name). The dataset is the ``dataset`` column, else the
    manifest's file name without ``.csv``.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise InputError(f"--manifest {manifest}: no such file")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"--manifest {manifest}: cannot be read ({error})") from None
    if not rows:
        raise InputError(f"--manifest {manifest}: no rows (expected columns image,label)")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise InputError(f"--manifest {manifest}: missing column(s) {', '.join(missing)}")
    root = manifest.resolve().parent
    stems = [_default_case_name(row) for row in rows]
    use_stem = len(set(stems)) == len(stems)
    specs: list[CaseSpec] = []
    for number, (row, stem) in enumerate(zip(rows, stems, strict=True), start=1):
        where = f"{manifest.name} row {number}"
        image, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
        if not image or not label:
            raise InputError(f"{where}: empty image or label cell")
        name = (row.get("case") or "").strip() or (stem if use_stem else image)
        specs.append(
            CaseSpec(
                case=name,
                dataset=(row.get("dataset") or "").strip() or manifest.stem,
                image=root / image,
                label=root / label,
                label_value=_parse_label_value(row.get("label_value", ""), where),
                modality=_parse_preset(row.get("modality", ""), where),
                row=number,
            )
        )
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        key = (spec.dataset, spec.case)
        if key in seen:
            raise InputError(f"--manifest {manifest}: case {spec.case!r} appears twice")
        seen.add(key)
    return specs
