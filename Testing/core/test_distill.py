"""Distillation: the student keeps the teacher's decoder and approaches its embeddings; the teacher runs once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minisam.cli.main import main as cli_main
from minisam.errors import ModelError
from minisam.model_config import preset
from minisam.model_loader import load_model
from minisam.training.distill import (
    DistillSettings,
    TeacherEmbeddings,
    build_student,
    distill,
    embedding_error,
    student_config,
)
from minisam.training.manifest import write_manifest
from minisam.training.model_inputs import to_model_inputs
from minisam.training.slice_samples import samples_from_pairs

CXR = "cxr_lung_montgomery_shenzhen"


def _pairs(shared_data: Path, start: int, count: int) -> list[tuple[Path, Path]]:
    root = shared_data / CXR
    images = sorted((root / "images").glob("MCUCXR_*.png"))[start : start + count]
    return [(image, root / "masks" / image.name) for image in images]


def test_student_config_matches_the_teacher_grid() -> None:
    teacher = load_model("default").config  # 256 px, 16 x 16 grid, 256-d embedding
    tiny = student_config(teacher, "tiny")
    assert (tiny.embedding_size, tiny.prompt_embed_dim) == (16, 256)
    assert tiny.encoder_embed_dim == preset("tiny").encoder_embed_dim
    assert tiny.decoder_mlp_dim == teacher.decoder_mlp_dim
    vit_h = preset("vit_h")
    assert student_config(vit_h, "compact").patch_size == 8  # 512 px onto vit_h's 64 x 64 grid
    with pytest.raises(ModelError, match="not a multiple of the teacher's 16x16"):
        student_config(teacher, "tiny", image_size=100)


def test_distillation_brings_student_embeddings_to_the_teacher(
    shared_data: Path, tmp_path: Path
) -> None:
    teacher = load_model("default")
    config = student_config(teacher.config, "tiny")
    torch.manual_seed(0)
    student = build_student(teacher, config)
    decoder_before = {k: v.clone() for k, v in student.mask_decoder.state_dict().items()}
    assert all(
        torch.equal(v, teacher.sam.mask_decoder.state_dict()[k]) for k, v in decoder_before.items()
    )

    train = samples_from_pairs(_pairs(shared_data, 0, 8), "cxr", "xray")
    held_out = samples_from_pairs(_pairs(shared_data, 20, 3), "cxr", "xray")
    cache = TeacherEmbeddings(teacher, tmp_path / "cache")
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
    teacher = load_model("default")
    images = to_model_inputs(
        samples_from_pairs(_pairs(shared_data, 0, 2), "cxr", "xray"), teacher.config
    ).images
    first = TeacherEmbeddings(teacher, tmp_path)(images)
    with torch.inference_mode():
        direct = teacher.sam.image_encoder(teacher.sam.preprocess(images.float()))
    torch.testing.assert_close(first, direct, rtol=1e-5, atol=1e-5)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran although its embeddings are cached")

    teacher.sam.image_encoder.forward = refuse
    again = TeacherEmbeddings(teacher, tmp_path)
    torch.testing.assert_close(again(images), first)
    assert again.computed == 0


def test_cli_distill_then_finetune(shared_data: Path, tmp_path: Path, capsys) -> None:
    rows = [
        {"image": str(i), "label": str(m), "modality": "xray"} for i, m in _pairs(shared_data, 0, 5)
    ]
    manifest = write_manifest(tmp_path / "cxr.csv", rows)
    out = tmp_path / "student.safetensors"
    args = ["distill", "--manifest", str(manifest), "--student", "tiny", "--epochs", "2",
            "--batch-size", "4", "--finetune-epochs", "1", "--cache", str(tmp_path / "cache"),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["teacher_images_encoded"] == 4 and "finetune_best_val_dice" in summary
    assert summary["finetune_best_val_dice"] >= summary["distill_val_dice"]
    student = load_model(str(out))
    assert student.config.encoder_embed_dim == preset("tiny").encoder_embed_dim
    assert cli_main(args) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err
