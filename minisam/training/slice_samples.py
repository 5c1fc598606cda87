"""Slice samples for training: one (image, mask) pair per (slice, label) with a non-empty mask."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from minisam.errors import InputError
from minisam.imageio import read_image
from minisam.intensity import choose_preset, normalize_intensity, to_rgb


@dataclass
class SliceSample:
    """A normalised (H, W, 3) 0..255 image, its binary mask and where it came from."""

    image: np.ndarray
    mask: np.ndarray
    case: str
    modality: str
    dataset: str


def read_mask_2d(path: str | Path, threshold: float = 127) -> np.ndarray:
    """A 2D binary mask from an image file (values above ``threshold`` are foreground)."""
    array = read_image(path).array
    if array.ndim == 3:
        array = array.max(axis=-1)
    return array > threshold


def samples_from_pairs(
    pairs: Iterable[tuple[Path, Path]],
    dataset: str,
    modality: str = "auto",
    split_components: bool = False,
    min_area: int = 50,
) -> list[SliceSample]:
    """Samples from 2D image/mask files; ``split_components`` adds one sample per connected component."""
    samples = []
    for image_path, mask_path in pairs:
        image = read_image(image_path)
        mask = read_mask_2d(mask_path)
        if mask.shape != image.array.shape[:2]:
            raise InputError(
                f"mask {mask_path} has shape {mask.shape}, image {image_path} {image.array.shape}"
            )
        kind = choose_preset(modality, image)
        rgb = to_rgb(normalize_intensity(image.array, kind)).astype(np.uint8)
        case = Path(image_path).stem
        for part in _parts(mask, split_components, min_area):
            samples.append(SliceSample(rgb, part, case, kind, dataset))
    return samples


def samples_from_volume(
    image_path: str | Path,
    label_path: str | Path,
    dataset: str,
    modality: str = "auto",
    axis: int = 0,
    label_values: Sequence[int] | None = None,
    min_area: int = 20,
    every: int = 1,
) -> list[SliceSample]:
    """Samples from a volume and its label map: each slice (every ``every``-th) × each present label."""
    image = read_image(image_path)
    labels = read_image(label_path).array
    if labels.shape != image.array.shape:
        raise InputError(
            f"label map {label_path} has shape {labels.shape}, image {image_path} "
            f"{image.array.shape}"
        )
    kind = choose_preset(modality, image)
    volume = normalize_intensity(image.array, kind)
    values = (
        label_values if label_values is not None else [int(v) for v in np.unique(labels) if v != 0]
    )
    case = Path(str(image_path)).name
    samples = []
    for index in range(0, volume.shape[axis], every):
        label_slice = np.take(labels, index, axis=axis)
        present = set(np.unique(label_slice).astype(int).tolist())
        rgb = None
        for value in values:
            if value not in present:
                continue
            mask = label_slice == value
            if mask.sum() < min_area:
                continue
            if rgb is None:
                rgb = to_rgb(np.take(volume, index, axis=axis)).astype(np.uint8)
            samples.append(SliceSample(rgb, mask, case, kind, dataset))
    return samples


def unlabelled_slices(
    image_path: str | Path, dataset: str, modality: str = "auto", axis: int = 0
) -> list[SliceSample]:
    """Every slice of a volume (or the one image of a 2D file) with an empty mask.

    For label-free training such as distillation, which needs images but no masks.
    """
    image = read_image(image_path)
    kind = choose_preset(modality, image)
    volume = normalize_intensity(image.array, kind)
    case = Path(str(image_path)).name
    if image.is_volume:
        planes = [np.take(volume, i, axis=axis) for i in range(volume.shape[axis])]
    else:
        planes = [volume]
    samples = []
    for plane in planes:
        if np.ptp(plane) == 0:  # a blank slice teaches nothing
            continue
        rgb = to_rgb(plane).astype(np.uint8)
        samples.append(SliceSample(rgb, np.zeros(rgb.shape[:2], bool), case, kind, dataset))
    return samples


def _parts(mask: np.ndarray, split_components: bool, min_area: int) -> list[np.ndarray]:
    parts = [mask]
    if split_components:
        components, count = ndimage.label(mask)
        if count > 1:
            parts += [
                components == i for i in range(1, count + 1) if (components == i).sum() >= min_area
            ]
    return parts
