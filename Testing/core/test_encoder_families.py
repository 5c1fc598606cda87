"""Every path of the product on the TinyViT family (random weights, fast): segmentation, quantization,
adapters, distillation and the commands on top of them, the way they already run on the ViT family."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from minisam.adapters import AdapterSpec, attach_adapter, load_adapter, save_adapter
from minisam.adapters.lora import target_module_names
from minisam.checkpoints import infer_config, save_checkpoint
from minisam.cli.main import main
from minisam.engine import SamEngine
from minisam.errors import ModelError
from minisam.model_config import build_sam, preset
from minisam.model_loader import load_model
from minisam.prompts import Prompt
from minisam.quantization import encoder_linears, quantize_model
from minisam.quantized_checkpoint import load_quantized_checkpoint, save_quantized_checkpoint
from minisam.training.distill import build_student, student_config

CT = "totalsegmentator_example/example_ct_sm.nii.gz"  # 122 x 101 x 30 voxels
TINY_VIT = "random:tiny_vit"


def _block_linears(config) -> int:
    """Linears of TinyViT's transformer blocks: qkv, proj, fc1, fc2 in every block after stage 0."""
    return 4 * sum(config.encoder.depths[1:])


def _mask(model, image: np.ndarray) -> np.ndarray:
    engine = SamEngine(model.sam, model.config)
    embedding = engine.embed(image)
    return engine.predict(embedding, Prompt(box=np.array([20, 20, 90, 100]))).mask


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (120, 110, 3)).astype(np.float32)


def test_segment_volume_with_propagation_and_prompt_file(shared_data: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps([{"slice": 10, "box": [44, 27, 104, 81]}, {"slice": 20, "points": [[70, 50]]}])
    )
    out = tmp_path / "mask.nii.gz"
    args = ["segment", str(shared_data / CT), "--prompts", str(prompts), "--propagate",
            "--max-slices", "3", "--output", str(out), "--model", TINY_VIT, "--quiet"]  # fmt: skip
    assert main(args) == 0
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(shared_data / CT))
    assert written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()


def test_state_dict_recognised_as_tiny_vit(tmp_path: Path) -> None:
    # The input size leaves no trace in TinyViT's tensors: a state dict gets its variant's size.
    config = preset("tiny_vit")
    inferred = infer_config(build_sam(config).state_dict())
    assert inferred.encoder == config.encoder.replace(image_size=inferred.image_size)
    # A LiteMedSAM-shaped state dict comes back as the preset, with LiteMedSAM's preprocessing.
    assert infer_config(build_sam(preset("litemedsam")).state_dict()) == preset("litemedsam")


@pytest.mark.parametrize("scheme", ["nf4", "int8", "nf4:mlp+int8:attn", "nf4:all"])
def test_quantization_covers_the_block_linears(scheme: str, image, tmp_path: Path) -> None:
    model = load_model(TINY_VIT, seed=1)
    reference = _mask(copy.deepcopy(model), image)
    report = quantize_model(model, scheme)
    encoder_layers = [name for name in report.layers if name.startswith("image_encoder.")]
    assert len(encoder_layers) == _block_linears(model.config) == len(encoder_linears(model.sam))
    assert all(".blocks." in name for name in encoder_layers)
    assert (_mask(model, image) == reference).mean() > 0.9
    path = save_quantized_checkpoint(model.sam, model.config, tmp_path / "q.safetensors")
    again = load_quantized_checkpoint(path)
    assert again.config == model.config
    assert np.array_equal(_mask(again, image), _mask(model, image))


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_adapters_target_tiny_vit_blocks_and_round_trip(method: str, image, tmp_path: Path) -> None:
    model = load_model(TINY_VIT, seed=2)
    base_hash = model.base_hash()  # of the plain model, before peft wraps its layers
    extra = {"total_step": 10} if method == "adalora" else {}
    spec = AdapterSpec(method=method, target_modules=("qkv", "proj", "fc1", "fc2"),
                       include_decoder=True, **extra)  # fmt: skip
    names = target_module_names(model.sam, replace(spec, encoder_family="tiny_vit"))
    encoder_names = [n for n in names if n.startswith("image_encoder.")]
    assert len(encoder_names) == _block_linears(model.config)
    peft_model = attach_adapter(model.sam, spec, "ct")
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_E" in name:
                param.add_(0.05)
    adapted = _mask(model, image)
    folder = save_adapter(
        peft_model, "ct", tmp_path / "ct", {"modality": "CT", "base_hash": base_hash}
    )
    fresh = load_model(TINY_VIT, seed=2)
    load_adapter(fresh.sam, folder, fresh.base_hash(), "ct")
    assert np.array_equal(_mask(fresh, image), adapted)


def test_an_adapter_target_the_family_lacks_is_an_error() -> None:
    model = load_model(TINY_VIT)
    with pytest.raises(ModelError, match="lin1 match no linear layer of this tiny_vit model"):
        attach_adapter(model.sam, AdapterSpec(target_modules=("qkv", "lin1")), "ct")


def test_distillation_across_families() -> None:
    # A TinyViT teacher (LiteMedSAM's 64 x 64 grid) and a ViT student fitted onto its grid ...
    teacher = preset("litemedsam")
    student = student_config(teacher, "student")
    assert student.family == "vit" and student.embedding_size == teacher.embedding_size
    assert student.intensity_scaling == "minmax"  # the student sees the teacher's input
    # ... and a TinyViT student of a ViT teacher.
    vit_teacher = load_model("random:tiny")
    with pytest.raises(ModelError, match="16x16 embedding at image size 256 .mobilesam. or 64"):
        student_config(vit_teacher.config, "tiny_vit")  # 128 px fits neither TinyViT stem
    config = student_config(vit_teacher.config, "tiny_vit", image_size=64)
    assert (
        config.family == "tiny_vit" and config.embedding_size == vit_teacher.config.embedding_size
    )
    sam = build_student(vit_teacher, config)
    with torch.no_grad():
        out = sam.image_encoder(torch.zeros(1, 3, config.image_size, config.image_size))
    assert tuple(out.shape[1:]) == (
        config.prompt_embed_dim,
        config.embedding_size,
        config.embedding_size,
    )


def test_quant_report_and_checkpoint_of_tiny_vit(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["quant-report", "--model", TINY_VIT, "--quant", "nf4", "--out", str(out)]) == 0
    report = json.loads((out / "quant_error.json").read_text())
    assert len(report["layers"]) == _block_linears(preset("tiny_vit"))
    model = load_model(TINY_VIT, seed=4)
    path = save_checkpoint(model.sam, model.config, tmp_path / "m.safetensors")
    assert load_model(str(path)).config == model.config


def test_a_quantization_group_that_matches_no_layer_is_an_error(monkeypatch) -> None:
    from minisam.encoders import vit

    # A family whose MLP linears are not quantizable: "mlp" must fail instead of doing nothing.
    monkeypatch.setattr(
        vit, "QUANTIZABLE_LINEAR", re.compile(r"^blocks\.\d+\.(?P<group>attn)\.qkv$")
    )
    model = load_model("random:tiny")
    with pytest.raises(
        ModelError, match="names layer group.s. mlp that match no layer of this vit"
    ):
        quantize_model(model, "nf4:attn,mlp")
    assert all(type(m) is torch.nn.Linear for _, m in encoder_linears(model.sam).values())


def test_frozen_batch_norms_keep_their_statistics_in_train_mode(image) -> None:
    model = load_model(TINY_VIT, seed=5)
    peft_model = attach_adapter(model.sam, AdapterSpec(rank=2), "ct")  # freezes the base
    before = {k: v.clone() for k, v in model.sam.state_dict().items() if "running_" in k}
    peft_model.train()
    with torch.no_grad():
        model.sam.image_encoder(torch.rand(2, 3, 128, 128) * 3)
    after = {k: v for k, v in model.sam.state_dict().items() if "running_" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    student = load_model(TINY_VIT, seed=5).sam.train()  # nothing frozen: batch norms train
    assert any(m.training for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_bench_measures_a_tiny_vit_at_another_input_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--models", "tiny_vit", "--quants", "fp32", "--input-sizes", "64",
            "--repeats", "1", "--no-adapter-rows", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    (row,) = json.loads(out.read_text())
    assert row["model"] == "tiny_vit" and row["input_size"] == 64 and row["encoder_ms"] > 0
