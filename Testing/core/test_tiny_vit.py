"""TinyViT encoder family (MobileSAM / LiteMedSAM): configs, shapes, state-dict recognition, layer names.

No real weights here: the upstream parity checks are in test_tiny_vit_weights.py.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from minisam.encoders import tiny_vit
from minisam.encoders.tiny_vit import LITEMEDSAM, MOBILESAM, TINY, TinyViTConfig
from minisam.errors import ModelError

PRESETS = {"tiny": TINY, "litemedsam": LITEMEDSAM, "mobilesam": MOBILESAM}
# Parameters of upstream's image encoders (the checkpoints' image_encoder.* tensors less BN statistics).
UPSTREAM_PARAMS = {"litemedsam": 5_726_740, "mobilesam": 6_065_532}


class _Wrapper(torch.nn.Module):
    """A model whose state dict has the ``image_encoder.`` prefix, like SAM's."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.image_encoder = encoder


def _attention_blocks(config: TinyViTConfig) -> int:
    return sum(config.depths[1:])


def test_presets_describe_the_published_models() -> None:
    assert MOBILESAM.embedding_size == LITEMEDSAM.embedding_size == 64
    assert (MOBILESAM.patch_size, LITEMEDSAM.patch_size) == (16, 4)
    assert TINY.embedding_size == 32
    assert MOBILESAM.family == LITEMEDSAM.family == tiny_vit.FAMILY == "tiny_vit"
    assert "mobilesam" in MOBILESAM.describe() and "1024px" in MOBILESAM.describe()
    for name, expected in UPSTREAM_PARAMS.items():
        with torch.device("meta"):  # no memory for the weights
            encoder = tiny_vit.build(PRESETS[name])
        assert sum(p.numel() for p in encoder.parameters()) == expected


def test_tiny_runs_on_a_batch_in_eval_mode() -> None:
    torch.manual_seed(0)
    encoder = tiny_vit.build(TINY)
    assert not encoder.training and encoder.img_size == TINY.image_size
    x = torch.randn(2, 3, TINY.image_size, TINY.image_size)
    with torch.inference_mode():
        out = encoder(x)
        single = encoder(x[1:])
    assert tuple(out.shape) == (2, TINY.out_chans, TINY.embedding_size, TINY.embedding_size)
    # Windows of one image never mix with another's.
    torch.testing.assert_close(out[1:], single, rtol=1e-4, atol=1e-5)


def test_litemedsam_preset_runs_at_256_px() -> None:
    torch.manual_seed(0)
    encoder = tiny_vit.build(LITEMEDSAM)
    with torch.inference_mode():
        out = encoder(torch.randn(1, 3, 256, 256))
    assert tuple(out.shape) == (1, 256, 64, 64)
    assert torch.isfinite(out).all()


def test_a_wrong_input_size_is_a_model_error() -> None:
    encoder = tiny_vit.build(TINY)
    with pytest.raises(ModelError, match=r"\(B, 3, 128, 128\)"):
        encoder(torch.zeros(1, 3, 64, 64))


def test_windows_equal_to_the_grid_take_the_unpartitioned_path() -> None:
    config = TINY.replace(image_size=64, window_sizes=(7, 16, 16))  # stages 2 and 3 run on 16 x 16
    encoder = tiny_vit.build(config)
    with torch.inference_mode():
        assert tuple(encoder(torch.randn(1, 3, 64, 64)).shape) == (1, 64, 16, 16)


def test_gradients_reach_the_input_and_the_attention() -> None:
    torch.manual_seed(0)
    encoder = tiny_vit.build(TINY)
    x = torch.randn(1, 3, TINY.image_size, TINY.image_size, requires_grad=True)
    encoder(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    attn = encoder.layers[1].blocks[0].attn
    for param in (attn.qkv.weight, attn.proj.weight, attn.attention_biases):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())


def test_relative_bias_index_numbers_offsets_as_upstream() -> None:
    # Upstream's construction: offsets numbered in order of first appearance over all point pairs.
    window = 5
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    expected = [
        offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets))
        for a in points
        for b in points
    ]
    index = tiny_vit.Attention(8, 2, window).attention_bias_idxs
    assert index.tolist() == torch.tensor(expected).view(window**2, window**2).tolist()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_is_read_back_from_a_state_dict(name: str) -> None:
    config = PRESETS[name]
    state = _Wrapper(tiny_vit.build(config)).state_dict()
    found = tiny_vit.config_from_state(state)
    # The input size is not in the weights: it is the variant's published one.
    assert found == config.replace(
        image_size={"mobilesam": 1024, "litemedsam": 256}[config.variant]
    )
    bare = {k.removeprefix("image_encoder."): v for k, v in state.items()}
    assert tiny_vit.config_from_state(bare, prefix="") == found
    model = tiny_vit.build(found)
    model.load_state_dict(bare, strict=True)


def test_other_state_dicts_are_not_tiny_vit() -> None:
    vit_like = {
        "image_encoder.patch_embed.proj.weight": torch.zeros(32, 3, 16, 16),
        "image_encoder.pos_embed": torch.zeros(1, 4, 4, 32),
        "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(96, 32),
        "image_encoder.neck.0.weight": torch.zeros(16, 32, 1, 1),
    }
    assert tiny_vit.config_from_state(vit_like) is None
    assert tiny_vit.config_from_state({}) is None
    tiny_state = _Wrapper(tiny_vit.build(TINY)).state_dict()
    assert tiny_vit.config_from_state(tiny_state, prefix="encoder.") is None


def test_a_damaged_tiny_vit_state_dict_is_a_model_error() -> None:
    state = _Wrapper(tiny_vit.build(TINY)).state_dict()
    del state["image_encoder.layers.2.blocks.1.attn.attention_biases"]
    with pytest.raises(ModelError, match="attention biases"):
        tiny_vit.config_from_state(state)
    state = _Wrapper(tiny_vit.build(TINY)).state_dict()
    state["image_encoder.patch_embed.seq.0.c.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(ModelError, match="5x5"):
        tiny_vit.config_from_state(state)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"variant": "sam"}, "variant must be one of"),
        ({"num_heads": (2, 3)}, "one entry per attention stage"),
        ({"window_sizes": (7, 8, 5, 7)}, "one entry per attention stage"),
        ({"embed_dims": (16, 32, 48)}, ">= 2 stages"),
        (
            {"depths": (1,), "embed_dims": (16,), "num_heads": (), "window_sizes": ()},
            "positive integers",
        ),
        ({"num_heads": (2, 5, 4)}, "not divisible"),
        ({"image_size": 130}, "not a multiple of 4"),
        ({"depths": (1, 0, 2, 1)}, "positive integers"),
        ({"window_sizes": (7, 8.0, 5)}, "positive integers"),
        ({"embed_dims": "16,32"}, "sequence of integers"),
        ({"local_conv_size": 4}, "odd"),
        ({"mlp_ratio": 0}, "positive number"),
        ({"head_classes": -1}, "head_classes"),
    ],
)
def test_invalid_configs_fail_with_one_line(changes: dict, words: str) -> None:
    with pytest.raises(ModelError, match=re.escape(words)) as error:
        TINY.replace(**changes)
    assert "\n" not in str(error.value)


def test_config_round_trips_through_json() -> None:
    for config in PRESETS.values():
        data = config.to_dict()
        assert isinstance(data["embed_dims"], list) and isinstance(data["num_heads"], list)
        assert TinyViTConfig.from_dict(json.loads(json.dumps(data))) == config
    with pytest.raises(ModelError, match=r"unknown fields \['patch_size'\]"):
        TinyViTConfig.from_dict({**TINY.to_dict(), "patch_size": 4})
    with pytest.raises(ModelError, match=r"lacks fields \['variant'\]"):
        TinyViTConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "variant"})


def test_for_grid_picks_the_variant_that_gives_the_grid() -> None:
    assert tiny_vit.for_grid(TINY, 128, 32) == TINY
    assert tiny_vit.for_grid(TINY, 512, 32) == TINY.replace(variant="mobilesam", image_size=512)
    assert tiny_vit.for_grid(MOBILESAM, 256, 64) == MOBILESAM.replace(
        variant="litemedsam", image_size=256
    )
    with pytest.raises(
        ModelError, match=r"at image size 512 \(mobilesam\) or 128 \(litemedsam\), not 200"
    ):
        tiny_vit.for_grid(TINY, 200, 32)


@pytest.mark.parametrize("name", ["tiny", "mobilesam"])
def test_quantizable_linears_are_exactly_the_block_linears(name: str) -> None:
    config = PRESETS[name]
    encoder = tiny_vit.build(config)
    matches = {}
    for module_name, module in encoder.named_modules():
        found = tiny_vit.QUANTIZABLE_LINEAR.match(module_name)
        if found:
            assert isinstance(module, torch.nn.Linear), module_name
            leaf = module_name.rsplit(".", 1)[1]
            assert found["group"] == ("attn" if leaf in ("qkv", "proj") else "mlp"), module_name
            matches[module_name] = found["group"]
    blocks = _attention_blocks(config)
    assert list(matches.values()).count("attn") == list(matches.values()).count("mlp") == 2 * blocks
    # Every other linear (MobileSAM's unused classifier head) is left alone.
    linears = [n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(set(linears) - set(matches)) == (["head"] if config.head_classes else [])


@pytest.mark.parametrize("name", ["tiny", "mobilesam"])
def test_lora_scope_selects_only_the_attention_projections(name: str) -> None:
    config = PRESETS[name]
    encoder = tiny_vit.build(config)
    names = dict(encoder.named_modules())
    # The regex LoRA builds from a family's scope and leaf names (minisam.adapters.lora), for every leaf
    # name a block linear has: inside the scope each one is a transformer block's linear.
    for leaves in (tiny_vit.LORA_TARGETS, ("fc1", "fc2")):
        target = re.compile(rf"{tiny_vit.LORA_BLOCK_SCOPE}(?:\w+\.)*(?:{'|'.join(leaves)})")
        chosen = [n for n in names if target.fullmatch(n)]
        assert len(chosen) == len(leaves) * _attention_blocks(config)
        assert all(tiny_vit.QUANTIZABLE_LINEAR.match(n) for n in chosen)
    # Nothing in the MBConv stage, the patch embedding, the mergings or the neck is in the scope.
    scope = re.compile(tiny_vit.LORA_BLOCK_SCOPE)
    in_scope = {n.split(".")[1] for n in names if scope.match(n)}
    assert in_scope == {str(i) for i in range(1, len(config.depths))}
