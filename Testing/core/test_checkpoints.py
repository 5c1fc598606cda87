"""Checkpoints: official layout and MiniSAM safetensors load back to identical models; bad files fail cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minisam.checkpoints import (
    infer_config,
    load_minisam_checkpoint,
    load_official_checkpoint,
    save_checkpoint,
    save_official_layout,
)
from minisam.errors import ModelError
from minisam.model_config import build_sam, preset
from minisam.model_loader import load_model


def _embedding(sam: torch.nn.Module, size: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, size, size, generator=generator) * 255
    with torch.inference_mode():
        return sam.image_encoder(sam.preprocess(image))


def test_official_layout_vit_b_loads_by_path_with_the_same_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_sam(preset("vit_b"))
    path = save_official_layout(source, tmp_path / "sam_vit_b_random.pth")
    keys = torch.load(path, map_location="cpu", weights_only=True).keys()
    assert {k.split(".")[0] for k in keys} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    loaded = load_model(str(path))
    assert loaded.config == preset("vit_b")  # architecture recognised from the tensor shapes
    assert torch.equal(_embedding(source, 1024), _embedding(loaded.sam, 1024))


def test_inferred_config_of_a_non_preset_architecture(tmp_path: Path) -> None:
    config = preset("tiny")
    state = build_sam(config).state_dict()
    inferred = infer_config(state)
    assert inferred.to_dict() | {"decoder_num_heads": 4} == config.to_dict()


def test_minisam_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    config = preset("tiny")
    torch.manual_seed(3)
    source = build_sam(config)
    path = save_checkpoint(source, config, tmp_path / "m.safetensors", card={"name": "demo"})
    loaded = load_minisam_checkpoint(path)
    assert loaded.config == config and loaded.name == "demo"
    for key, tensor in source.state_dict().items():
        assert torch.equal(tensor, loaded.sam.state_dict()[key]), key
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_truncated_checkpoints_fail_with_one_line(tmp_path: Path) -> None:
    config = preset("tiny")
    sam = build_sam(config)
    good_st = save_checkpoint(sam, config, tmp_path / "a.safetensors")
    good_pth = save_official_layout(sam, tmp_path / "a.pth")
    for good in (good_st, good_pth):
        cut = tmp_path / f"cut{good.suffix}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(ModelError) as error:
            load_model(str(cut))
        assert str(cut) in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_of_another_architecture_is_named(tmp_path: Path) -> None:
    path = save_official_layout(build_sam(preset("tiny")), tmp_path / "tiny.pth")
    with pytest.raises(ModelError, match="does not fit the vit_b architecture"):
        load_official_checkpoint(path, arch="vit_b")


def test_non_sam_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ModelError, match="not a SAM state dict"):
        load_model(str(other))
    pickled = tmp_path / "evil.pth"
    torch.save({"image_encoder.x": object()}, pickled)  # arbitrary objects need unsafe unpickling
    with pytest.raises(ModelError, match="cannot be read"):
        load_model(str(pickled))
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ModelError, match="no MiniSAM model config"):
        load_model(str(plain))


def test_half_precision_storage_halves_the_file_and_loads_as_float32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = preset("tiny")
    sam = build_sam(config)
    full = save_checkpoint(sam, config, tmp_path / "full.safetensors")
    half = save_checkpoint(sam, config, tmp_path / "half.safetensors", storage_dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load_model(str(half)).sam
    for key, value in sam.state_dict().items():
        again = loaded.state_dict()[key]
        assert again.dtype == value.dtype
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(again, expected), key
