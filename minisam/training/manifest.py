"""Manifest CSVs of annotated images, shared by ``minisam train-adapter`` and ``minisam evaluate``.

Columns: ``image`` and ``label`` (paths relative to the CSV's folder, or absolute), optional
``label_value`` (the label to use; empty or absent: any non-zero value) and ``modality`` (a
normalisation name such as "us", "ct", "mr", "xray"; empty or absent: the command's choice, else
guessed). A 2D image gives one slice sample; a 3D volume gives one per slice with enough foreground.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minisam.errors import InputError, MiniSAMError
from minisam.imageio import read_image
from minisam.intensity import guess_modality, normalize_intensity, to_rgb
from minisam.training.slice_samples import SliceSample

REQUIRED_COLUMNS = ("image", "label")
OPTIONAL_COLUMNS = ("label_value", "modality")


@dataclass(frozen=True)
class ManifestRow:
    """One checked row: existing files, the label value (None = any non-zero) and modality."""

    line: int
    image: Path
    label: Path
    label_value: int | None
    modality: str | None


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """The rows of a manifest CSV; one-line InputError for a bad header, value or missing file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise InputError(
                    f"manifest {path}: header {header} lacks column(s) {', '.join(missing)} "
                    f"(need {', '.join(REQUIRED_COLUMNS)}; optional {', '.join(OPTIONAL_COLUMNS)})"
                )
            rows = [
                _row(path, reader.line_num, {(k or "").strip(): v for k, v in raw.items()})
                for raw in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read manifest {path} ({exc})") from None
    if not rows:
        raise InputError(f"manifest {path} has no rows")
    return rows


def _row(csv_path: Path, line: int, raw: dict[str, str | None]) -> ManifestRow:
    where = f"manifest {csv_path} line {line}"
    files = []
    for column in REQUIRED_COLUMNS:
        text = (raw.get(column) or "").strip()
        if not text:
            raise InputError(f"{where}: empty {column!r}")
        file = Path(text) if Path(text).is_absolute() else csv_path.parent / text
        if not file.exists():
            raise InputError(f"{where}: {column} file {file} does not exist")
        files.append(file)
    value_text = (raw.get("label_value") or "").strip()
    try:
        value = int(value_text) if value_text else None
    except ValueError:
        raise InputError(f"{where}: label_value {value_text!r} is not an integer") from None
    modality = (raw.get("modality") or "").strip() or None
    return ManifestRow(line, files[0], files[1], value, modality)


def samples_from_manifest(
    rows: list[ManifestRow], dataset: str = "manifest", modality: str = "auto", min_area: int = 20
) -> list[SliceSample]:
    """Slice samples of every row (a row's own modality wins over ``modality``)."""
    samples = []
    for row in rows:
        try:
            samples += row_samples(row, dataset, row.modality or modality, min_area)
        except MiniSAMError as exc:
            raise InputError(f"manifest line {row.line}: {exc}") from None
    return samples


def row_samples(
    row: ManifestRow, dataset: str, modality: str = "auto", min_area: int = 20
) -> list[SliceSample]:
    """Samples of one row: a 2D image as is, a volume's slices (axis 0) with foreground."""
    image = read_image(row.image)
    labels = read_image(row.label).array
    array = image.array
    if labels.ndim == 3 and array.ndim == 2 and labels.shape[-1] in (3, 4):
        labels = labels.max(axis=-1)  # an RGB(A) mask of a 2D image
    spatial = array.shape[:2] if array.ndim == 3 and array.shape[-1] in (3, 4) else array.shape
    if labels.shape != spatial:
        raise InputError(f"label {row.label} has shape {labels.shape}, image {spatial}")
    kind = guess_modality(image) if modality == "auto" else modality
    foreground = labels != 0 if row.label_value is None else labels == row.label_value
    normalized = normalize_intensity(array, kind)
    case = row.image.name
    if foreground.ndim == 2:
        if foreground.sum() < min_area:
            return []
        return [SliceSample(to_rgb(normalized).astype(np.uint8), foreground, case, kind, dataset)]
    return [
        SliceSample(to_rgb(normalized[i]).astype(np.uint8), foreground[i], f"{case}", kind, dataset)
        for i in range(foreground.shape[0])
        if foreground[i].sum() >= min_area
    ]


def write_manifest(path: str | Path, rows: list[dict[str, str]]) -> Path:
    """Write a manifest CSV (columns image, label, label_value, modality) from dicts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in writer.fieldnames})
    return path
