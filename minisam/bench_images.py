"""Real images for ``minisam bench``: prompts from the ground truth, the timed loop, mask agreement.

Upstream rows (:mod:`minisam.upstream_worker`) and MiniSAM's rows (:mod:`minisam.benchmark`) run the same
loop on the same images and prompts, so their times and masks compare directly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from minisam.dataset_manifest import CaseSpec, read_manifest
from minisam.errors import InputError
from minisam.metrics import dice

_FLAT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_rgb(path: str | Path) -> np.ndarray:
    """A PNG/JPEG as (H, W, 3) uint8, grey repeated into three channels (as upstream reads them)."""
    with Image.open(path) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def truth_mask(spec: CaseSpec) -> np.ndarray:
    with Image.open(spec.label) as image:
        label = np.asarray(image)
    label = label[..., 0] if label.ndim == 3 else label
    return label == spec.label_value if spec.label_value is not None else label > 0


def _in_turn(lists: list[list[CaseSpec]]) -> Iterator[CaseSpec]:
    for index in range(max((len(items) for items in lists), default=0)):
        yield from (items[index] for items in lists if index < len(items))


def bench_images(manifests: list[Path], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` 2D images of the manifests (in turn from each), each with the box of its ground
    truth and one positive click (the truth pixel nearest the truth's centroid), in image pixels."""
    lists = [
        [spec for spec in read_manifest(m) if spec.image.suffix.lower() in _FLAT_SUFFIXES]
        for m in manifests
    ]
    images = []
    for spec in _in_turn(lists):
        if len(images) == count:
            break
        rows, cols = np.nonzero(truth_mask(spec))
        if rows.size == 0:
            continue
        nearest = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
        images.append(
            {
                "path": str(spec.image.resolve()),
                "case": f"{spec.dataset}/{spec.case}",
                "box": [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())],
                "point": [int(cols[nearest]), int(rows[nearest])],
            }
        )
    if not images:
        raise InputError(f"--images {' '.join(map(str, manifests))}: no 2D image with a label")
    return images


def time_images(
    images: list[dict[str, Any]],
    embed: Callable[[np.ndarray], Any],
    click: Callable[[Any, list[int]], Any],
    box: Callable[[Any, list[int]], np.ndarray],
    clicks: int,
    sync: Callable[[], None] = lambda: None,
) -> tuple[float, float, list[np.ndarray]]:
    """(median ms per new slice, median ms per click, the box masks): each image embedded once (the
    first once more before, untimed, as warm-up), ``clicks`` one-click predictions spread over them."""
    per_image = max(1, -(-clicks // len(images)))
    slice_ms, click_ms, masks = [], [], []
    for index, image in enumerate(images):
        rgb = load_rgb(image["path"])
        if index == 0:
            click(embed(rgb), image["point"])
        sync()
        start = time.perf_counter()
        state = embed(rgb)
        sync()
        slice_ms.append((time.perf_counter() - start) * 1e3)
        for _ in range(per_image):
            start = time.perf_counter()
            click(state, image["point"])
            sync()
            click_ms.append((time.perf_counter() - start) * 1e3)
        masks.append(np.asarray(box(state, image["box"]), dtype=bool))
    return statistics.median(slice_ms), statistics.median(click_ms), masks


def save_masks(path: str | Path, masks: list[np.ndarray]) -> None:
    """The box masks of one row, for :func:`add_mask_agreement`."""
    np.savez_compressed(path, *masks)


def _load_masks(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _weights(row: dict[str, Any]) -> tuple:
    """Which weights a row ran: upstream rows and MiniSAM's official rows of one name share theirs."""
    official = row.get("implementation") == "upstream" or row.get("official")
    return ("official" if official else "minisam", row["model"])


def _agreement(row: dict[str, Any], reference: dict[str, Any] | None) -> tuple[float, float] | None:
    if reference is None or reference is row or not reference.get("masks_path"):
        return None
    scores = [
        dice(a, b)
        for a, b in zip(
            _load_masks(row["masks_path"]), _load_masks(reference["masks_path"]), strict=True
        )
    ]
    return statistics.mean(scores), min(scores)


def add_mask_agreement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the box masks' Dice (mean, min over images) against MiniSAM's torch row for the same
    weights (``dice_vs_torch``; for upstream rows: how far MiniSAM's numerics are from upstream's)
    and against the upstream row (``dice_vs_upstream``); drop the masks' paths."""
    measured = [r for r in rows if r.get("masks_path") and "error" not in r]
    torch_rows = {
        _weights(r): r
        for r in measured
        if r.get("implementation", "minisam") == "minisam"
        and r.get("runtime") == "torch"
        and r.get("quant") == "fp32"
        and not r.get("adapter")
    }
    upstream_rows = {_weights(r): r for r in measured if r.get("implementation") == "upstream"}
    for row in measured:
        for key, table in (("dice_vs_torch", torch_rows), ("dice_vs_upstream", upstream_rows)):
            value = _agreement(row, table.get(_weights(row)))
            if value is not None:
                row[key] = value
    for row in rows:
        row.pop("masks_path", None)
    return rows
