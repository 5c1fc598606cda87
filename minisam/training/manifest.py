"""Training samples from the manifest CSVs that ``minisam evaluate`` reads (one reader for both).

Columns (see :mod:`minisam.dataset_manifest`): ``image`` and ``label`` (paths relative to
the CSV's folder, or absolute), optional ``label_value`` (empty or absent: any non-zero value),
``modality`` (a normalisation preset such as "us", "ct-lung", "mr", "xray"; empty or "auto": the
command's choice, else guessed), ``case`` and ``dataset``. A 2D image gives one slice sample; a 3D volume one per
slice (along axis 0) with enough foreground. Unlike evaluation, which reports a bad case and goes
on, training refuses a manifest with a missing file: a model must not silently train on less.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from minisam.dataset_manifest import CaseSpec, read_manifest
from minisam.errors import InputError, MiniSAMError
from minisam.imageio import read_image
from minisam.intensity import choose_preset, normalize_intensity, to_rgb
from minisam.modality import AUTO
from minisam.training.slice_samples import SliceSample

MANIFEST_COLUMNS = ("image", "label", "label_value", "modality")

__all__ = ["read_training_manifest", "samples_from_manifest", "write_manifest"]


def read_training_manifest(path: str | Path) -> list[CaseSpec]:
    """The rows of a manifest CSV whose image and label files all exist (else a one-line InputError)."""
    specs = read_manifest(path)
    for spec in specs:
        for column, file in (("image", spec.image), ("label", spec.label)):
            if not file.exists():
                raise InputError(
                    f"manifest {Path(path).name} row {spec.row}: {column} file {file} does not exist"
                )
    return specs


def samples_from_manifest(
    specs: list[CaseSpec], modality: str = "auto", min_area: int = 20
) -> list[SliceSample]:
    """Slice samples of every row (a row's own modality wins over ``modality``)."""
    samples = []
    for spec in specs:
        kind = spec.modality if spec.modality != AUTO else modality
        try:
            samples += row_samples(spec, kind, min_area)
        except MiniSAMError as exc:
            raise InputError(f"manifest row {spec.row} ({spec.case}): {exc}") from None
    return samples


def row_samples(spec: CaseSpec, modality: str = "auto", min_area: int = 20) -> list[SliceSample]:
    """Samples of one row: a 2D image as is, a volume's slices (axis 0) with foreground.

    All rows of one image file share its case name, so splits by case keep them together.
    """
    image = read_image(spec.image)
    labels = read_image(spec.label).array
    array = image.array
    if labels.ndim == 3 and array.ndim == 2 and labels.shape[-1] in (3, 4):
        labels = labels.max(axis=-1)  # an RGB(A) mask of a 2D image
    spatial = array.shape[:2] if array.ndim == 3 and array.shape[-1] in (3, 4) else array.shape
    if labels.shape != spatial:
        raise InputError(f"label {spec.label} has shape {labels.shape}, image {spatial}")
    kind = choose_preset(modality, image)
    foreground = labels != 0 if spec.label_value is None else labels == spec.label_value
    normalized = normalize_intensity(array, kind)
    case = str(spec.image)
    if foreground.ndim == 2:
        if foreground.sum() < min_area:
            return []
        return [
            SliceSample(to_rgb(normalized).astype(np.uint8), foreground, case, kind, spec.dataset)
        ]
    return [
        SliceSample(to_rgb(normalized[i]).astype(np.uint8), foreground[i], case, kind, spec.dataset)
        for i in range(foreground.shape[0])
        if foreground[i].sum() >= min_area
    ]


def write_manifest(path: str | Path, rows: list[dict[str, str]]) -> Path:
    """Write a manifest CSV (columns image, label, label_value, modality) from dicts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in writer.fieldnames})
    return path
