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

from minisam.dataset_manifest import read_manifest
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
    "hc18_fetal_head_us": "HC18 (van den Heuvel et al. 2018, Zenodo 10.5281/zenodo.1322001), CC BY 4.0 per a "
    "third-party dataset card (not verified)",
}
CLICK_VALIDATION_EVERY = 10  # every 10th training case of a 2D set validates the click tuning
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


def evaluation_images(manifests: list[Path]) -> set[Path]:
    """The resolved image paths of evaluation manifests: what no training run may see."""
    return {spec.image.resolve() for m in manifests for spec in read_manifest(m)}


def hc18_subject(image: Path) -> str:
    """The HC18 subject of an image file (several images can show one subject)."""
    return image.name[:3]  # "063_2HC.png": subject 063's second image


def click_tuning_samples(
    data_root: Path, held_out: set[Path]
) -> tuple[list[SliceSample], list[SliceSample]]:
    """(train, validation) samples for teaching the default's prompt path clicks.

    The licence-compatible sets of the default mix plus HC18 ultrasound, minus every image in
    ``held_out`` (:func:`evaluation_images`) and, for HC18, every image of a held-out subject.
    Validation is every :data:`CLICK_VALIDATION_EVERY`-th case of the 2D sets (by case); the
    volumes all train. Non-commercial sets (Shenzhen masks, BraTS 2015, HAM10000) and the
    research-only Kvasir stay out: the result ships.
    """
    cxr_train, _ = montgomery_split(data_root)
    cxr = [pair for pair in cxr_train if pair[0].resolve() not in held_out]
    hc18_root = data_root / "hc18_fetal_head_us"
    held_subjects = {hc18_subject(p) for p in held_out if p.is_relative_to(hc18_root.resolve())}
    hc18 = [
        (image, hc18_root / "masks_filled" / f"{image.stem}_mask.png")
        for image in sorted((hc18_root / "images").glob("*.png"))
        if image.resolve() not in held_out and hc18_subject(image) not in held_subjects
    ]
    train: list[SliceSample] = []
    val: list[SliceSample] = []
    for pairs, dataset, modality, split in (
        (cxr, "cxr_montgomery", "xray", True),
        (hc18, "hc18_fetal_head_us", "us", False),
    ):
        chosen = pairs[::CLICK_VALIDATION_EVERY]
        val += samples_from_pairs(chosen, dataset, modality, split_components=split)
        rest = [pair for pair in pairs if pair not in chosen]
        train += samples_from_pairs(rest, dataset, modality, split_components=split)
    for v in training_volumes(data_root):
        if v.image.resolve() in held_out:
            continue
        train += samples_from_volume(
            v.image, v.labels, v.dataset, v.modality, min_area=v.min_area, every=v.every
        )
    return train, val
