"""Modality-aware intensity normalisation to SAM's 0..255 input range.

SAM was trained on 8-bit photographs, so every modality is mapped to float 0..255 before the
model's own mean/std normalisation. CT uses fixed Hounsfield windows (the numbers mean tissue);
MR and ultrasound have arbitrary units and use robust percentiles over the whole volume, so that
neighbouring slices share one mapping and a propagated mask does not see contrast jumps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minisam.errors import InputError
from minisam.modality import AUTO, check_preset, preset_for_dicom

if TYPE_CHECKING:
    from minisam.imageio import MedicalImage

__all__ = [
    "CT_WINDOWS",
    "ROBUST_PERCENTILES",
    "choose_preset",
    "guess_preset",
    "guess_preset_of",
    "normalize_intensity",
    "to_rgb",
]

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "ct": (40.0, 400.0),  # soft tissue
    "ct-abdomen": (50.0, 350.0),
    "ct-lung": (-600.0, 1500.0),
    "ct-bone": (400.0, 1800.0),
    "ct-brain": (40.0, 80.0),
}
"""CT window presets in HU as (level, width); the names are ``minisam.modality.CT_PRESETS``."""

ROBUST_PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to 0 and 255 for MR and ultrasound."""


def _scale(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 255], clipping outside; all zeros when high <= low."""
    if not high > low:
        return np.zeros(data.shape, dtype=np.float32)
    # float32 in place: a CT volume in float64 temporaries would need 4x its int16 size.
    out = data.astype(np.float32)
    np.clip(out, low, high, out=out)
    out -= np.float32(low)
    out *= np.float32(255.0 / (high - low))
    # Rounding in float32 can overshoot by an ulp; the contract is [0, 255].
    return np.clip(out, 0.0, 255.0, out=out)


def _min_max(data: np.ndarray) -> np.ndarray:
    return _scale(data, float(data.min()), float(data.max()))


def _guess_from_array(array: np.ndarray) -> str:
    """Best guess when only an array is known (prefer :func:`guess_preset` on an image)."""
    if array.dtype == np.uint8:
        return "rgb" if array.ndim == 3 and array.shape[-1] == 3 else "xray"
    if float(array.min()) <= -500 and float(array.max()) >= 300:
        return "ct"
    return "mr"


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"window must be (level, width) numbers, got {window!r}") from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise InputError(f"window (level, width) needs finite numbers and width > 0, got {window}")
    return level, width


def normalize_intensity(
    array: np.ndarray, preset: str, window: tuple[float, float] | None = None
) -> np.ndarray:
    """Map intensities to float32 in [0, 255] for SAM.

    Arguments:
      array: image, slice or whole volume (normalise volumes whole for a consistent mapping).
      preset: a normalisation preset (``minisam.modality.PRESET_CHOICES``): "auto", "ct"
        (soft-tissue window), "ct-abdomen", "ct-lung", "ct-bone", "ct-brain", "mr", "us" (robust
        percentiles), "xray" (uint8 kept, else min-max), "rgb" (kept, clipped to 0..255) or "raw"
        (min-max). "auto" guesses from the array alone; with a :class:`MedicalImage`, pass
        ``guess_preset(image)`` instead.
      window: (level, width); overrides the CT preset, and for any grey preset replaces the
        automatic mapping with this window.

    Returns:
      float32 array of the input's shape with values in [0, 255].

    Raises:
      InputError: unknown preset, bad window, empty or non-finite array.
    """
    key = check_preset(preset)
    data = np.asarray(array)
    if data.size == 0:
        raise InputError("cannot normalise an empty array")
    numeric = np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
    if not (numeric or data.dtype == bool):
        raise InputError(f"cannot normalise an array of dtype {data.dtype}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise InputError("cannot normalise an array containing NaN or infinite values")
    if key == AUTO:
        key = _guess_from_array(data)

    if window is not None:
        if key == "rgb":
            raise InputError("a (level, width) window applies to grey images, not preset 'rgb'")
        level, width = _check_window(window)
        return _scale(data, level - width / 2, level + width / 2)

    if key in CT_WINDOWS:
        level, width = CT_WINDOWS[key]
        return _scale(data, level - width / 2, level + width / 2)
    if key in ("mr", "us"):
        low, high = (float(v) for v in np.percentile(data, ROBUST_PERCENTILES))
        if not high > low:
            # Percentiles collapse when >99 % of voxels share one value (mostly background):
            # fall back to the full range so the few structured voxels stay visible.
            low, high = float(data.min()), float(data.max())
        return _scale(data, low, high)
    if key == "xray":
        if data.dtype == np.uint8:
            return data.astype(np.float32)
        return _min_max(data)
    if key == "rgb":
        return np.clip(data, 0, 255).astype(np.float32)
    return _min_max(data)  # raw


def choose_preset(choice: str, image: MedicalImage) -> str:
    """The normalisation preset ``choice`` names (checked), or for "auto" :func:`guess_preset`.

    Raises:
      InputError: ``choice`` is not a preset (``minisam.modality.PRESET_CHOICES``).
    """
    key = check_preset(choice)
    return guess_preset(image) if key == AUTO else key


def guess_preset(image: MedicalImage) -> str:
    """The normalisation preset for an image (see :func:`guess_preset_of`)."""
    return guess_preset_of(
        image.array, dicom_code=image.modality, is_rgb=image.is_rgb, is_volume=image.is_volume
    )


def guess_preset_of(
    array: np.ndarray, dicom_code: str | None = None, is_rgb: bool = False, is_volume: bool = True
) -> str:
    """Pick a :func:`normalize_intensity` preset from an image's DICOM code and values.

    Order: the preset of the DICOM code's family (``minisam.modality.preset_for_dicom``: CT, MR,
    US, the X-ray codes CR/DX/MG/...); colour -> "rgb"; an intensity range spanning air and bone in
    HU (min <= -500 and max >= 300) -> "ct"; 2D uint8 grey -> "xray"; otherwise "mr".

    Arguments:
      array: the voxels or pixels (a volume whole, so the guess does not depend on one slice).
      dicom_code: the image's (0008,0060) Modality, if it has one.
      is_rgb: a colour image (last axis RGB).
      is_volume: a 3D volume rather than a 2D image.
    """
    mapped = preset_for_dicom(dicom_code)
    if mapped is not None:
        return mapped
    if is_rgb:
        return "rgb"
    # 2D slices too: a non-8-bit grey image spanning air..bone in HU is a CT slice.
    if array.dtype != np.uint8 and float(array.min()) <= -500 and float(array.max()) >= 300:
        return "ct"
    if not is_volume and array.dtype == np.uint8:
        return "xray"
    return "mr"


def to_rgb(slice2d: np.ndarray) -> np.ndarray:
    """Grey (H, W) or (H, W, 1) repeated to (H, W, 3) float32; (H, W, 3) passes through.

    Raises:
      InputError: any other shape.
    """
    data = np.asarray(slice2d)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return np.repeat(data[..., None], 3, axis=2).astype(np.float32)
    if data.ndim == 3 and data.shape[2] == 3:
        return data.astype(np.float32)
    raise InputError(f"expected a 2D grey or (H, W, 3) colour slice, got shape {data.shape}")
