"""The data mix behind the embedded default model, with licences, split by case.

Only sets whose terms allow redistributing derived weights are used for the shipped model: Montgomery chest
X-rays (U.S. NLM public release; the Shenzhen masks are CC BY-NC-SA and left out), TotalSegmentator's example
CT/MR volumes (Apache-2.0 repository; labels are model predictions), pyradiomics and dcmqi test data (BSD-style),
and the multi-site prostate MRI slices (Apache-2.0 repository, upstream challenge terms). Ultrasound (HC18) is
held out entirely: it is the unseen modality for few-shot adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minisam.training.slice_samples import (
    SliceSample,
    samples_from_pairs,
    samples_from_volume,
    unlabelled_slices,
)

LICENCES = {
    "cxr_montgomery": "U.S. NLM Montgomery County CXR set, public release (Jaeger et al. 2014); masks via "
    "rochadiego/MultiResUNet-lung-segmentation (MIT repository)",
    "totalsegmentator_example": "TotalSegmentator repository test files, Apache-2.0 (labels are model outputs)",
    "pyradiomics_testdata": "pyradiomics repository test data, BSD-3-Clause-style licence",
    "dcmqi_ct3slice_seg": "dcmqi repository test data, BSD-style licence",
    "prostate_mri_multisite": "finetune-SAM repository (Apache-2.0); upstream NCI-ISBI 2013 / PROMISE12 / I2CVB "
    "terms apply",
}
RADIOMICS = ("brain1", "brain2", "breast1")
VALIDATION_CXR_EVERY = 8  # every 8th Montgomery case is held out for validation (by case)


def _pairs(folder: Path, pattern: str, mask_name) -> list[tuple[Path, Path]]:
    images = sorted((folder / "images").glob(pattern))
    return [(image, folder / "masks" / mask_name(image)) for image in images]


def montgomery_split(data_root: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(train, held-out) Montgomery chest X-ray (image, mask) pairs: every 8th case is held out."""
    cxr = _pairs(data_root / "cxr_lung_montgomery_shenzhen", "MCUCXR_*.png", lambda p: p.name)
    held_out = cxr[::VALIDATION_CXR_EVERY]
    return [pair for pair in cxr if pair not in held_out], held_out


@dataclass(frozen=True)
class TrainingVolume:
    """A training volume of the default mix and how its slices become samples."""

    image: Path
    labels: Path
    dataset: str
    modality: str
    min_area: int = 20
    every: int = 1


def training_volumes(data_root: Path) -> list[TrainingVolume]:
    """The 3D training volumes of the default mix, in sample order (the pyradiomics ones if present)."""
    ts = data_root / "totalsegmentator_example"
    radiomics = data_root / "pyradiomics_testdata"
    dcmqi = data_root / "dcmqi_ct3slice_seg"
    ts_name, radiomics_name = "totalsegmentator_example", "pyradiomics_testdata"
    return [
        TrainingVolume(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", ts_name, "ct", 30),
        TrainingVolume(
            ts / "example_ct_dicom", ts / "example_seg_dicom.nii.gz", ts_name, "ct", 200, every=2
        ),
        *(
            TrainingVolume(
                radiomics / f"{n}_image.nrrd", radiomics / f"{n}_label.nrrd", radiomics_name, "mr"
            )
            for n in RADIOMICS
            if (radiomics / f"{n}_image.nrrd").exists()
        ),  # fmt: skip
        TrainingVolume(
            dcmqi / "ct_dicom", dcmqi / "liver_spine_seg.nrrd", "dcmqi_ct3slice_seg", "ct", 100
        ),
    ]


def default_samples(data_root: Path) -> tuple[list[SliceSample], list[SliceSample]]:
    """(train, validation) samples for the embedded default, split by case."""
    cxr_train, cxr_val = montgomery_split(data_root)
    prostate = _pairs(
        data_root / "prostate_mri_multisite_5shot_finetuneSAM", "*.png", lambda p: p.name
    )
    prostate_val = [pair for pair in prostate if pair[0].name.startswith("UCL")]
    prostate_train = [pair for pair in prostate if pair not in prostate_val]

    train = samples_from_pairs(cxr_train, "cxr_montgomery", "xray", split_components=True)
    train += samples_from_pairs(prostate_train, "prostate_mri_multisite", "mr")
    for v in training_volumes(data_root):
        train += samples_from_volume(
            v.image, v.labels, v.dataset, v.modality, min_area=v.min_area, every=v.every
        )
    ts = data_root / "totalsegmentator_example"
    val = samples_from_pairs(cxr_val, "cxr_montgomery", "xray", split_components=True)
    val += samples_from_pairs(prostate_val, "prostate_mri_multisite", "mr")
    val += samples_from_volume(
        ts / "example_mr_sm.nii.gz",
        ts / "example_seg_mr.nii.gz",
        "totalsegmentator_example",
        "mr",
        min_area=30,
        every=2,
    )
    return train, val


def unlabelled_training_slices(data_root: Path) -> list[SliceSample]:
    """Every axial slice of the training volumes, labelled or not, with empty masks.

    Distillation needs no labels, so it can also learn from the slices that no label touches
    (most of the brain MR slices, for one). The validation volume stays out.
    """
    return [
        s
        for v in training_volumes(data_root)
        for s in unlabelled_slices(v.image, v.dataset, v.modality)
    ]
