"""The embedded default model: it loads, says what trained it, segments held-out chest X-rays, and the
README's main job works exactly as written."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from minisam.checkpoints import weights_hash
from minisam.engine import SamEngine
from minisam.imageio import read_image
from minisam.intensity import normalize_intensity, to_rgb
from minisam.metrics import dice
from minisam.model_config import count_parameters
from minisam.model_loader import DEFAULT_MODEL, PACKAGE_WEIGHTS, load_model
from minisam.prompts import Prompt, mask_bounding_box
from minisam.training.default_recipe import VALIDATION_CXR_EVERY
from minisam.training.slice_samples import read_mask_2d

README = Path(__file__).resolve().parents[2] / "README.md"
CXR = "cxr_lung_montgomery_shenzhen"
TEACHER = PACKAGE_WEIGHTS / "minisam_teacher_v1.safetensors"


def _held_out_cxr(shared_data: Path) -> list[Path]:
    images = sorted((shared_data / CXR / "images").glob("MCUCXR_*.png"))
    return images[::VALIDATION_CXR_EVERY]


def test_default_model_card_names_data_and_licences() -> None:
    loaded = load_model("default")
    assert DEFAULT_MODEL.stat().st_size < 60e6
    card = loaded.card
    assert card["trained"] is True and card["name"].startswith("minisam-default")
    assert "cxr_montgomery" in card["datasets"]
    # Non-commercial sets and the held-out modality stay out of the shipped weights.
    assert not any(
        word in str(card["datasets"]).lower() for word in ("shenzhen", "ham10000", "hc18")
    )
    assert all(len(text) > 20 for text in card["datasets"].values())
    assert "scripts/reproduce_default.py" in card["command"]


def test_default_is_a_student_distilled_from_the_shipped_teacher() -> None:
    student, teacher = load_model("default"), load_model(str(TEACHER))
    assert student.card["teacher_hash"] == weights_hash(teacher.sam)
    assert "scripts/train_default.py" in teacher.card["command"]
    assert count_parameters(student.sam.image_encoder) < 0.5 * count_parameters(
        teacher.sam.image_encoder
    )
    # It keeps the teacher's prompt encoder and mask decoder (distillation trains the encoder only).
    for part in ("prompt_encoder", "mask_decoder"):
        mine, theirs = (
            getattr(student.sam, part).state_dict(),
            getattr(teacher.sam, part).state_dict(),
        )
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_student_keeps_95_percent_of_the_teachers_lung_dice(shared_data: Path) -> None:
    teacher = np.mean(_held_out_lung_dice(load_model(str(TEACHER)), shared_data))
    student = np.mean(_held_out_lung_dice(load_model("default"), shared_data))
    assert student >= 0.95 * teacher, (student, teacher)


def _held_out_lung_dice(loaded, shared_data: Path) -> list[float]:
    engine = SamEngine(loaded.sam, loaded.config)
    scores = []
    for path in _held_out_cxr(shared_data):
        truth = read_mask_2d(shared_data / CXR / "masks" / path.name)
        embedding = engine.embed(to_rgb(normalize_intensity(read_image(path).array, "xray")))
        components, count = ndimage.label(truth)
        for label in range(1, count + 1):
            lung = components == label
            if lung.sum() > 1000:
                prediction = engine.predict(embedding, Prompt(box=mask_bounding_box(lung)))
                scores.append(dice(prediction.mask, lung))
    return scores


def test_default_model_segments_held_out_lungs_from_a_box(shared_data: Path) -> None:
    scores = _held_out_lung_dice(load_model("default"), shared_data)
    assert len(scores) >= 20
    assert np.mean(scores) > 0.85, scores
    assert np.min(scores) > 0.6, scores


def _readme_main_job() -> list[str]:
    text = README.read_text()
    block = re.search(r"\*\*1\..*?```bash\n(.*?)\n```", text, re.S)
    assert block, "README lost its first command"
    install, _, job = block.group(1).partition(" && ")
    assert install.startswith("pip install") and job.startswith("minisam segment")
    return shlex.split(job)


def test_readme_main_job_as_written(shared_data: Path, tmp_path: Path) -> None:
    argv = [arg.replace("../shared/data", str(shared_data)) for arg in _readme_main_job()]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    mask_name = argv[argv.index("--output") + 1]
    mask = read_image(tmp_path / mask_name).array > 127
    assert mask.shape == (512, 512)
    assert (tmp_path / argv[argv.index("--overlay") + 1]).is_file()
    # The README's box frames the right lung (image left) of a held-out case: compare with it.
    image = Path(argv[2])
    assert image in _held_out_cxr(shared_data)
    truth = read_mask_2d(shared_data / CXR / "masks" / image.name)
    components, _ = ndimage.label(truth)
    box = [float(v) for v in argv[argv.index("--box") + 1 : argv.index("--box") + 5]]
    lung = components == components[int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)]
    assert dice(mask, lung) > 0.85


def test_default_model_propagates_the_liver_from_one_box(shared_data: Path, tmp_path: Path) -> None:
    # The example CT is in the training mix, so this guards propagation behaviour, not generalisation.
    ct = shared_data / "totalsegmentator_example"
    out = tmp_path / "liver.nii.gz"
    argv = [
        "minisam",
        "segment",
        str(ct / "example_ct_sm.nii.gz"),
        "--slice",
        "24",
        "--box",
        "44",
        "27",
        "104",
        "81",
        "--propagate",
        "--output",
        str(out),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    liver = read_image(ct / "example_seg.nii.gz").array == 5  # TotalSegmentator label 5
    predicted = read_image(out).array > 0
    assert (predicted.reshape(30, -1).sum(1) > 0).sum() >= 15
    assert dice(predicted, liver) > 0.7


def test_quantized_default_agrees_with_fp32(shared_data: Path, tmp_path: Path, capsys) -> None:
    from minisam.cli.main import main

    image = str(_held_out_cxr(shared_data)[0])
    box = ["--box", "85", "55", "260", "370"]
    masks = {}
    for quant in ("fp32", "nf4", "int8"):
        out = tmp_path / f"{quant}.png"
        assert main(["segment", image, *box, "--quant", quant, "--output", str(out)]) == 0
        masks[quant] = read_image(out).array > 127
    assert "(nf4)" in capsys.readouterr().out
    assert dice(masks["nf4"], masks["fp32"]) > 0.95
    assert dice(masks["int8"], masks["fp32"]) > 0.95
    bad = tmp_path / "bad.png"
    assert main(["segment", image, *box, "--quant", "int3", "--output", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "int3" in err and len(err.splitlines()) == 1 and not bad.exists()
