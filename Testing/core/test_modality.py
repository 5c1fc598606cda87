"""The modality vocabulary: DICOM code -> adapter family -> normalisation preset, and back."""

from __future__ import annotations

import pytest

from minisam.errors import InputError
from minisam.modality import (
    FAMILIES,
    PRESET_CHOICES,
    PRESETS,
    adapter_family,
    check_preset,
    family_for_dicom,
    family_of_preset,
    preset_for_dicom,
    preset_for_family,
)


def test_family_for_dicom() -> None:
    codes = ("CT", "MR", "US", "CR", "DX", "MG", "PT", "IVUS", "XA", "SM")
    families = ["CT", "MR", "US", "XRAY", "XRAY", "XRAY", "PET", "US", "XRAY", "PATHOLOGY"]
    assert [family_for_dicom(c) for c in codes] == families
    assert family_for_dicom(" dx ") == "XRAY"  # case and spaces do not matter
    assert [family_for_dicom(a) for a in ("X-ray", "mri", "CBCT", "xray")] == [
        "XRAY",
        "MR",
        "CT",
        "XRAY",
    ]
    assert all(family_for_dicom(f) == f for f in FAMILIES)
    for unknown in ("OT", "ct-lung", "", None):
        assert family_for_dicom(unknown) is None


def test_presets_and_families_map_both_ways() -> None:
    assert [family_of_preset(p) for p in PRESETS] == [
        *["CT"] * 5,
        "MR",
        "US",
        "XRAY",
        None,  # rgb: photographs, endoscopy ... no adapter family of their own
        None,  # raw
    ]
    assert family_of_preset("auto") is None and family_of_preset("CT-Lung") == "CT"
    for family in ("CT", "MR", "US", "XRAY"):
        assert family_of_preset(preset_for_family(family)) == family
    assert preset_for_family("PET") is None and preset_for_family("nonsense") is None
    assert preset_for_dicom("MG") == "xray" and preset_for_dicom("OT") is None


def test_adapter_family_decides_by_dicom_code_then_preset() -> None:
    assert adapter_family(None, "ct-lung") == "CT"  # the ct-lung divergence (issue 12)
    assert adapter_family("", "ct-bone") == "CT"
    assert adapter_family("DX", "raw") == "XRAY"  # the DICOM code decides when there is one
    assert adapter_family("OT", "ct") is None  # ... even when it is unknown, as before
    assert adapter_family(None, "rgb") is None


def test_check_preset() -> None:
    assert check_preset(" CT-Lung ") == "ct-lung"
    assert check_preset("auto") == "auto" and "auto" in PRESET_CHOICES
    with pytest.raises(InputError, match="unknown modality 'auto'; choose one of ct,"):
        check_preset("auto", allow_auto=False)
    with pytest.raises(InputError, match="unknown modality 'DX'") as error:
        check_preset("DX")
    assert "\n" not in str(error.value)
