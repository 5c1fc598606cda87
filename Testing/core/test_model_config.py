"""Architectures: official presets match segment-anything's builders; configs round-trip; bad ones fail."""

from __future__ import annotations

import pytest
import torch

from minisam.errors import ModelError
from minisam.model_config import PRESETS, SamConfig, build_sam, count_parameters, preset

# Parameter counts of segment-anything's own builders (shared/weights.md).
OFFICIAL_ENCODER_PARAMS = {"vit_b": 89_670_912, "vit_l": 308_278_272, "vit_h": 637_026_048}


@pytest.mark.parametrize("name", sorted(OFFICIAL_ENCODER_PARAMS))
def test_official_presets_have_the_official_sizes(name: str) -> None:
    with torch.device("meta"):  # no memory for the weights
        sam = build_sam(preset(name))
    assert count_parameters(sam.image_encoder) == OFFICIAL_ENCODER_PARAMS[name]
    assert count_parameters(sam.prompt_encoder) == 6_220
    assert count_parameters(sam.mask_decoder) == 4_058_340


def test_presets_build_and_run_at_their_input_size() -> None:
    for name in ("tiny", "small", "tiny_vit", "litemedsam"):
        config = preset(name)
        sam = build_sam(config)
        with torch.inference_mode():
            out = sam.image_encoder(torch.zeros(1, 3, config.image_size, config.image_size))
        assert tuple(out.shape) == (
            1,
            config.prompt_embed_dim,
            config.embedding_size,
            config.embedding_size,
        )


def test_config_round_trips_through_dict() -> None:
    for config in PRESETS.values():
        assert SamConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"image_size": 100}, "multiple of patch_size"),
        ({"num_heads": 7}, "divisible"),
        ({"global_attn_indexes": (11, 12)}, "exceed depth"),
    ],
)
def test_invalid_encoder_configs_are_rejected(changes: dict, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        preset("vit_b").replace_encoder(**changes)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"resize_filter": "cubic"}, "resize_filter"),
        ({"intensity_scaling": "zscore"}, "intensity_scaling"),
        ({"decoder_num_heads": 7}, "not divisible by decoder_num_heads"),
    ],
)
def test_invalid_configs_are_rejected(changes: dict, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        preset("vit_b").replace(**changes)


def test_configs_written_before_encoder_families_still_load() -> None:
    # The flat layout of every MiniSAM checkpoint written before v0.2 (the embedded default's too).
    flat = {
        "image_size": 256, "patch_size": 16, "encoder_embed_dim": 160, "encoder_depth": 4,
        "encoder_num_heads": 5, "encoder_global_attn_indexes": [1, 3], "encoder_window_size": 8,
        "encoder_mlp_ratio": 4.0, "prompt_embed_dim": 256, "mask_in_chans": 16, "decoder_depth": 2,
        "decoder_mlp_dim": 2048, "decoder_num_heads": 8, "iou_head_hidden_dim": 256,
        "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375],
        "resize_mode": "longest_side", "extra": {},
    }  # fmt: skip
    assert SamConfig.from_dict(flat) == preset("student")
    assert preset("student").to_dict()["encoder"]["family"] == "vit"
    with pytest.raises(ModelError, match="mixes 'encoder' with flat fields"):
        SamConfig.from_dict({**preset("tiny").to_dict(), "encoder_depth": 3})
    with pytest.raises(ModelError, match="unknown encoder family 'hiera'"):
        SamConfig.from_dict({**preset("tiny").to_dict(), "encoder": {"family": "hiera"}})


def test_unknown_preset_and_unknown_fields() -> None:
    with pytest.raises(ModelError, match="unknown architecture 'vit_x'"):
        preset("vit_x")
    with pytest.raises(ModelError, match="unknown fields"):
        SamConfig.from_dict({"bogus": 1})
