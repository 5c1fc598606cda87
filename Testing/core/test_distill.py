"""Distillation: the student keeps the teacher's decoder and approaches its embeddings; the teacher runs once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import SMALL_MODEL

from minisam.cli.main import main as cli_main
from minisam.errors import InputError, ModelError
from minisam.model_config import preset
from minisam.model_loader import load_model
from minisam.training.default_recipe import unlabelled_training_slices
from minisam.training.distill import (
    DistillSettings,
    build_student,
    distill,
    distill_resume_file,
    embedding_error,
    student_config,
    with_views,
)
from minisam.training.embedding_store import EmbeddingStore
from minisam.training.manifest import write_manifest
from minisam.training.model_inputs import to_model_inputs
from minisam.training.slice_samples import (
    samples_from_pairs,
    samples_from_volume,
    unlabelled_slices,
)

CXR = "cxr_lung_montgomery_shenzhen"


def _pairs(shared_data: Path, start: int, count: int) -> list[tuple[Path, Path]]:
    root = shared_data / CXR
    images = sorted((root / "images").glob("MCUCXR_*.png"))[start : start + count]
    return [(image, root / "masks" / image.name) for image in images]


def test_student_config_matches_the_teacher_grid() -> None:
    teacher = load_model(SMALL_MODEL).config  # 256 px, 16 x 16 grid, 256-d embedding
    tiny = student_config(teacher, "tiny")
    assert (tiny.embedding_size, tiny.prompt_embed_dim) == (16, 256)
    assert tiny.encoder.embed_dim == preset("tiny").encoder.embed_dim
    assert tiny.decoder_mlp_dim == teacher.decoder_mlp_dim
    vit_h = preset("vit_h")
    assert student_config(vit_h, "compact").encoder.patch_size == 8  # 512 px onto a 64 x 64 grid
    with pytest.raises(ModelError, match="not a multiple of the 16x16 embedding grid"):
        student_config(teacher, "tiny", image_size=100)


def test_distillation_brings_student_embeddings_to_the_teacher(
    shared_data: Path, tmp_path: Path
) -> None:
    teacher = load_model(SMALL_MODEL)
    config = student_config(teacher.config, "tiny")
    torch.manual_seed(0)
    student = build_student(teacher, config)
    decoder_before = {k: v.clone() for k, v in student.mask_decoder.state_dict().items()}
    assert all(
        torch.equal(v, teacher.sam.mask_decoder.state_dict()[k]) for k, v in decoder_before.items()
    )

    train = samples_from_pairs(_pairs(shared_data, 0, 8), "cxr", "xray")
    held_out = samples_from_pairs(_pairs(shared_data, 20, 3), "cxr", "xray")
    cache = EmbeddingStore(teacher, tmp_path / "cache")
    teacher_held = cache(to_model_inputs(held_out, teacher.config).images)
    student_held = to_model_inputs(held_out, config).images
    before = embedding_error(student, student_held, teacher_held)

    settings = DistillSettings(epochs=12, batch_size=4, learning_rate=2e-3, warmup_fraction=0.1)
    report = distill(
        teacher, student, config,
        (to_model_inputs(train, teacher.config), to_model_inputs(train, config)),
        to_model_inputs(held_out, config), cache, tmp_path / "student.safetensors", settings,
    )  # fmt: skip
    after = embedding_error(student, student_held, teacher_held)
    assert after < 0.7 * before, (before, after)  # on images the student never trained on
    assert report.history[-1]["train_loss"] < 0.6 * report.history[0]["train_loss"]
    assert cache.computed == 8 + 3  # each image encoded by the teacher once
    assert all(
        torch.equal(v, student.mask_decoder.state_dict()[k]) for k, v in decoder_before.items()
    )
    saved = load_model(str(tmp_path / "student.safetensors"))
    assert saved.config == config and saved.card["trained"] is True


def test_teacher_embeddings_come_from_the_cache(shared_data: Path, tmp_path: Path) -> None:
    teacher = load_model(SMALL_MODEL)
    images = to_model_inputs(
        samples_from_pairs(_pairs(shared_data, 0, 2), "cxr", "xray"), teacher.config
    ).images
    first = EmbeddingStore(teacher, tmp_path)(images)
    with torch.inference_mode():
        direct = teacher.sam.image_encoder(teacher.sam.preprocess(images.float()))
    torch.testing.assert_close(first, direct, rtol=1e-5, atol=1e-5)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran although its embeddings are cached")

    teacher.sam.image_encoder.forward = refuse
    again = EmbeddingStore(teacher, tmp_path)
    torch.testing.assert_close(again(images), first)
    assert again.computed == 0


def test_cli_distill_then_finetune(shared_data: Path, tmp_path: Path, capsys) -> None:
    rows = [
        {"image": str(i), "label": str(m), "modality": "xray"} for i, m in _pairs(shared_data, 0, 5)
    ]
    manifest = write_manifest(tmp_path / "cxr.csv", rows)
    out = tmp_path / "student.safetensors"
    brain = shared_data / "pyradiomics_testdata" / "brain2_image.nrrd"  # 23 slices, no labels used
    # the 2 M-parameter test model as teacher: the CLI's flow is under test, not LiteMedSAM's encoder
    args = ["distill", "--manifest", str(manifest), "--unlabelled", str(brain), "--teacher", SMALL_MODEL,
            "--student", "tiny", "--epochs", "2",
            "--batch-size", "4", "--finetune-epochs", "1", "--cache", str(tmp_path / "cache"),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["teacher_images_encoded"] == 4 + 23 and "finetune_best_val_dice" in summary
    assert summary["finetune_best_val_dice"] >= summary["distill_val_dice"]
    student = load_model(str(out))
    assert student.config.encoder.embed_dim == preset("tiny").encoder.embed_dim
    assert cli_main(args) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_augmented_views_are_the_same_view_at_teacher_and_student_size(shared_data: Path) -> None:
    samples = samples_from_pairs(_pairs(shared_data, 0, 3), "cxr", "xray")
    big = to_model_inputs(samples, preset("small"))  # 256 px
    small = to_model_inputs(samples, student_config(preset("small"), "tiny", image_size=128))
    chosen = torch.arange(3)
    views_big = with_views(big, chosen, 2, seed=5).float()
    views_small = with_views(small, chosen, 2, seed=5).float()
    assert views_big.shape == (9, 3, 256, 256) and views_small.shape == (9, 3, 128, 128)
    assert torch.equal(views_big[:3], big.images.float())  # the originals come first
    assert torch.equal(with_views(big, chosen, 2, seed=5).float(), views_big)  # from the seed alone
    assert not torch.equal(with_views(big, chosen, 2, seed=6).float(), views_big)

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    shrunk = torch.nn.functional.avg_pool2d(views_big, 2)
    for i in range(3, 9):  # each view, downsized, is the student's view of it, not another view
        same = correlation(shrunk[i], views_small[i])
        assert same > 0.99, (i, same)
        other = i + 3 if i < 6 else i - 3  # the same image in the other view
        assert same > correlation(shrunk[i], views_small[other]) + 0.1
    for i in range(3, 9):  # a view differs from its original
        assert (views_big[i] - views_big[i % 3]).abs().mean() > 2.0


def test_distillation_with_views_encodes_each_view_once(shared_data: Path, tmp_path: Path) -> None:
    teacher = load_model(SMALL_MODEL)
    config = student_config(teacher.config, "tiny")
    torch.manual_seed(0)
    student = build_student(teacher, config)
    train = samples_from_pairs(_pairs(shared_data, 0, 4), "cxr", "xray")
    cache = EmbeddingStore(teacher, tmp_path / "cache")
    settings = DistillSettings(epochs=2, batch_size=4, augmented_views=2)
    inputs = (to_model_inputs(train, teacher.config), to_model_inputs(train, config))
    report = distill(
        teacher, student, config, inputs, inputs[1], cache, tmp_path / "s.safetensors", settings
    )
    assert cache.computed == 4 * 3
    assert len(report.history) == 2
    cache.computed = 0
    distill(
        teacher, build_student(teacher, config), config, inputs, inputs[1], cache,
        tmp_path / "s2.safetensors", settings,
    )  # fmt: skip
    assert cache.computed == 0  # the same views again: all from the cache


def test_cli_distill_refuses_negative_views(shared_data: Path, tmp_path: Path, capsys) -> None:
    rows = [
        {"image": str(i), "label": str(m), "modality": "xray"} for i, m in _pairs(shared_data, 0, 2)
    ]
    manifest = write_manifest(tmp_path / "cxr.csv", rows)
    out = tmp_path / "student.safetensors"
    assert (
        cli_main(["distill", "--manifest", str(manifest), "--views", "-1", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--views must be >= 0" in err and len(err.splitlines()) == 1
    assert not out.exists()
    missing = ["distill", "--manifest", str(manifest), "--unlabelled", str(tmp_path / "no.nii.gz"),
               "--out", str(out)]  # fmt: skip
    assert cli_main(missing) == 2
    err = capsys.readouterr().err.strip()
    assert "no.nii.gz" in err and len(err.splitlines()) == 1 and not out.exists()


def test_unlabelled_slices_add_the_slices_no_label_touches(shared_data: Path) -> None:
    radiomics = shared_data / "pyradiomics_testdata"
    everything = unlabelled_slices(radiomics / "brain1_image.nrrd", "radiomics", "mr")
    labelled = samples_from_volume(
        radiomics / "brain1_image.nrrd", radiomics / "brain1_label.nrrd", "radiomics", "mr"
    )
    assert len(everything) == 25 and not any(s.mask.any() for s in everything)
    # The labelled slices are among them, byte for byte (same normalisation of the volume).
    assert all(any(np.array_equal(s.image, u.image) for u in everything) for s in labelled)
    assert len({s.image.tobytes() for s in labelled}) < len(everything)
    single = unlabelled_slices(_pairs(shared_data, 0, 1)[0][0], "cxr", "xray")
    assert len(single) == 1 and single[0].image.shape == (512, 512, 3)
    recipe = unlabelled_training_slices(shared_data)
    assert "example_mr_sm.nii.gz" not in {s.case for s in recipe}  # the validation volume
    assert {s.dataset for s in recipe} >= {"totalsegmentator_example", "pyradiomics_testdata"}


def test_resume_refuses_another_view_count(shared_data: Path, tmp_path: Path) -> None:
    teacher = load_model(SMALL_MODEL)
    config = student_config(teacher.config, "tiny")
    inputs = tuple(
        to_model_inputs(samples_from_pairs(_pairs(shared_data, 0, 2), "cxr", "xray"), c)
        for c in (teacher.config, config)
    )
    cache = EmbeddingStore(teacher, tmp_path / "cache")
    out = tmp_path / "s.safetensors"

    def run(views: int, resume: bool):
        settings = DistillSettings(epochs=2, batch_size=2, augmented_views=views)
        return distill(
            teacher, build_student(teacher, config), config, inputs, inputs[1], cache, out,
            settings, progress=lambda event: False,  # cancel after the first step
            resume_from=distill_resume_file(out) if resume else None,
        )  # fmt: skip

    assert run(1, resume=False).cancelled and distill_resume_file(out).is_file()
    with pytest.raises(InputError, match="augmented_views 1 != 2"):
        run(2, resume=True)
    assert run(1, resume=True).resumed


@pytest.mark.parametrize("option", ["--box-probability", "--correction-clicks", "--geometric-aug"])
def test_cli_distill_has_no_prompt_options(option: str, tmp_path: Path, capsys) -> None:
    """Distillation's loss is on embeddings (its augmentation is --views): prompt-simulation options
    would be silently ignored, so they are not offered."""
    out = tmp_path / "student.safetensors"
    argv = ["distill", "--manifest", "m.csv", option, "0.5", "--out", str(out)]
    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    assert stop.value.code == 2 and f"unrecognized arguments: {option}" in capsys.readouterr().err
    assert not out.exists()
