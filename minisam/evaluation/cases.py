"""Load one manifest case: image, ground-truth mask, the slice to prompt, spacing in numpy order.

2D images are evaluated whole. 3D volumes are prompted on the slice with the largest foreground
along array axis 0 (axial for the usual (Z, Y, X) layout); the metrics are computed on that slice,
or on the whole volume when the case is evaluated with propagation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minisam.dataset_manifest import CaseSpec
from minisam.errors import InputError
from minisam.geometry import grid_mismatch


@dataclass
class LoadedCase:
    """A case ready for evaluation."""

    spec: CaseSpec
    normalized: np.ndarray  # float32 0..255: (H, W), (H, W, 3) or (Z, Y, X)
    is_rgb: bool
    truth: np.ndarray  # bool, (H, W) or (Z, Y, X)
    spacing: tuple[float, ...]  # per array axis of ``truth`` (numpy order), mm
    slice_index: int  # prompted slice along axis 0 (0 for 2D)
    modality: str  # the normalisation preset actually used
    dicom_modality: str | None = None  # the image's DICOM Modality, if it has one

    @property
    def is_volume(self) -> bool:
        return self.truth.ndim == 3

    @property
    def slice_truth(self) -> np.ndarray:
        """Ground truth on the prompted slice."""
        return self.truth[self.slice_index] if self.is_volume else self.truth

    @property
    def slice_spacing(self) -> tuple[float, float]:
        return tuple(self.spacing[-2:])  # type: ignore[return-value]


def _check_geometry(image, label, spec: CaseSpec) -> None:
    mismatch = grid_mismatch(image, label)
    if mismatch is not None:
        raise InputError(
            f"label {spec.label.name} is not on the grid of image {spec.image.name}: {mismatch}"
        )


def _truth_mask(label, spec: CaseSpec) -> np.ndarray:
    array = label.array
    if label.is_rgb:
        if not (np.array_equal(array[..., 0], array[..., 1])) or not np.array_equal(
            array[..., 0], array[..., 2]
        ):
            raise InputError(f"label {spec.label.name} is a colour image")
        array = array[..., 0]
    mask = array != 0 if spec.label_value is None else array == spec.label_value
    if not mask.any():
        asked = "any non-zero value" if spec.label_value is None else f"{spec.label_value:g}"
        raise InputError(f"label {spec.label.name} has no foreground for value {asked}")
    return mask


def load_case(spec: CaseSpec) -> LoadedCase:
    """Read and check a case; raises :class:`InputError` with one line naming the problem."""
    from minisam.imageio import read_image
    from minisam.intensity import choose_preset, normalize_intensity

    for role, path in (("image", spec.image), ("label", spec.label)):
        if not path.exists():
            raise InputError(f"{role} file {path} is missing")
    image, label = read_image(spec.image), read_image(spec.label)
    _check_geometry(image, label, spec)
    truth = _truth_mask(label, spec)
    modality = choose_preset(spec.modality, image)
    normalized = normalize_intensity(image.array, modality)
    spacing = tuple(float(v) for v in reversed(image.spacing))
    slice_index = 0
    if image.is_volume:
        areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
        slice_index = int(np.argmax(areas))  # first of the largest, deterministic
    return LoadedCase(
        spec=spec,
        normalized=normalized,
        is_rgb=image.is_rgb,
        truth=truth,
        spacing=spacing,
        slice_index=slice_index,
        modality=modality,
        dicom_modality=image.modality,
    )
