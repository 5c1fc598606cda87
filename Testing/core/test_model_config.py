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
    for name in ("tiny", "small"):
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
        ({"encoder_num_heads": 7}, "divisible"),
        ({"encoder_global_attn_indexes": (11, 12)}, "exceed depth"),
        ({"resize_mode": "crop"}, "resize_mode"),
    ],
)
def test_invalid_configs_are_rejected(changes: dict, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        preset("vit_b").replace(**changes)


def test_unknown_preset_and_unknown_fields() -> None:
    with pytest.raises(ModelError, match="unknown architecture 'vit_x'"):
        preset("vit_x")
    with pytest.raises(ModelError, match="unknown fields"):
        SamConfig.from_dict({"bogus": 1})
