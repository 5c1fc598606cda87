"""One vocabulary for "modality", which means three different things in MiniSAM.

- a **DICOM code**: an image's (0008,0060) Modality tag, e.g. ``"CT"``, ``"DX"``, ``"MG"``;
- an **adapter family**: the kind of image an adapter is trained for, e.g. ``"CT"``, ``"XRAY"``
  (several DICOM codes share one family: DX, CR and MG are all ``"XRAY"``);
- a **normalisation preset**: how :func:`minisam.intensity.normalize_intensity` maps intensities to
  SAM's 0..255, e.g. ``"ct-lung"`` (a CT window), ``"mr"``, ``"xray"``, ``"rgb"``.

Conversions: :func:`family_for_dicom` (code -> family), :func:`preset_for_family` (family -> preset),
:func:`family_of_preset` (preset -> family, ``"ct-lung"`` -> ``"CT"``) and :func:`adapter_family`
(what the automatic adapter choice uses for an image). Every command, module and script goes through
these instead of keeping its own table.
"""

from __future__ import annotations

from minisam.errors import InputError

__all__ = [
    "AUTO",
    "CT_PRESETS",
    "FAMILIES",
    "PRESETS",
    "PRESET_CHOICES",
    "adapter_family",
    "check_preset",
    "describe_family",
    "family_for_dicom",
    "family_of_preset",
    "preset_for_dicom",
    "preset_for_family",
]

AUTO = "auto"
"""The choice "work it out from the image" (normalisation preset or adapter)."""

FAMILIES: tuple[str, ...] = (
    "CT",
    "MR",
    "US",
    "XRAY",
    "PET",
    "NM",
    "ENDOSCOPY",
    "PHOTO",
    "OCT",
    "PATHOLOGY",
)
"""Adapter families: what an adapter's metadata names as its modality."""

CT_PRESETS: tuple[str, ...] = ("ct", "ct-abdomen", "ct-lung", "ct-bone", "ct-brain")
"""Normalisation presets that are CT windows (their HU values: ``intensity.CT_WINDOWS``)."""

PRESETS: tuple[str, ...] = (*CT_PRESETS, "mr", "us", "xray", "rgb", "raw")
"""Normalisation presets of :func:`minisam.intensity.normalize_intensity`."""

PRESET_CHOICES: tuple[str, ...] = (AUTO, *PRESETS)
"""What a ``--modality`` option or a modality menu offers: "auto" and every preset."""

_DICOM_TO_FAMILY = {
    "CT": "CT",
    "MR": "MR",
    "US": "US",
    "IVUS": "US",
    **dict.fromkeys(("CR", "DX", "MG", "RF", "XA", "PX", "IO", "RG", "DF", "DS"), "XRAY"),
    "PT": "PET",
    "NM": "NM",
    "ES": "ENDOSCOPY",
    **dict.fromkeys(("XC", "OP", "GM"), "PHOTO"),
    **dict.fromkeys(("OCT", "OPT", "IVOCT"), "OCT"),
    "SM": "PATHOLOGY",
}
_FAMILY_DESCRIPTIONS = {
    "CT": "CT",
    "MR": "MR (MRI)",
    "US": "ultrasound",
    "XRAY": "X-ray (CR, DX, MG, XA, ...)",
    "PET": "PET",
    "NM": "nuclear medicine",
    "ENDOSCOPY": "endoscopy",
    "PHOTO": "photography / dermoscopy",
    "OCT": "optical coherence tomography",
    "PATHOLOGY": "digital pathology",
}
# Names people write for a family that are neither a DICOM code nor the family's own name.
_FAMILY_ALIASES = {"X-RAY": "XRAY", "XR": "XRAY", "MRI": "MR", "CBCT": "CT"}
# The preset a family is normalised with; families without one (PET, PHOTO, ...) are guessed.
_FAMILY_TO_PRESET = {"CT": "ct", "MR": "mr", "US": "us", "XRAY": "xray"}


def family_for_dicom(code: str | None) -> str | None:
    """The adapter family of a DICOM code, a family name or an alias ("DX" -> "XRAY", "mri" -> "MR").

    Returns:
      the family, or None for an empty or unknown code ("OT", "ct-lung").
    """
    if not code:
        return None
    key = str(code).strip().upper()
    if key in FAMILIES:
        return key
    return _DICOM_TO_FAMILY.get(key) or _FAMILY_ALIASES.get(key)


def describe_family(family: str) -> str:
    """The family in words for people ("US" -> "ultrasound"); an unknown name is returned as is."""
    return _FAMILY_DESCRIPTIONS.get(family, family)


def family_of_preset(preset: str | None) -> str | None:
    """The adapter family a normalisation preset belongs to ("ct-lung" -> "CT", "us" -> "US").

    Returns:
      the family, or None for "auto", "rgb", "raw" and unknown names.
    """
    key = str(preset or "").strip().lower()
    if key in CT_PRESETS:
        return "CT"
    return next((f for f, p in _FAMILY_TO_PRESET.items() if p == key), None)


def preset_for_family(family: str | None) -> str | None:
    """The normalisation preset of an adapter family, DICOM code or alias ("XRAY" or "DX" -> "xray").

    Returns:
      the preset, or None when the family has none (PET, PHOTO, ...) or is unknown.
    """
    return _FAMILY_TO_PRESET.get(family_for_dicom(family) or "")


def preset_for_dicom(code: str | None) -> str | None:
    """The normalisation preset of an image with DICOM code ``code`` (None: guess from the values)."""
    return preset_for_family(family_for_dicom(code))


def adapter_family(dicom_code: str | None, preset: str | None) -> str | None:
    """The family whose adapter the automatic choice applies to an image.

    Arguments:
      dicom_code: the image's DICOM Modality, if it has one; it decides when present.
      preset: the normalisation preset used for the image ("ct-lung" counts as CT).

    Returns:
      the family, or None (no adapter: an unknown DICOM code, or a preset such as "rgb" or "raw").
    """
    if dicom_code and dicom_code.strip():
        return family_for_dicom(dicom_code)
    return family_of_preset(preset)


def check_preset(name: str, allow_auto: bool = True) -> str:
    """``name`` as a normalisation preset (trimmed, lower case), or a one-line InputError.

    Arguments:
      name: what the user wrote ("CT-Lung", " mr ").
      allow_auto: accept "auto" (resolved later from the image).
    """
    key = str(name).strip().lower()
    choices = PRESET_CHOICES if allow_auto else PRESETS
    if key not in choices:
        raise InputError(f"unknown modality {name!r}; choose one of {', '.join(choices)}")
    return key
