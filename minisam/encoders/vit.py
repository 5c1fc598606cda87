"""The ViT image encoder family: segment-anything's ``ImageEncoderViT`` (SAM, MedSAM, MiniSAM's own).

A family owns its configuration, its builder, its embedding grid, how to recognise its weights in a state
dict, and the names of the layers that quantization and LoRA may target.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from minisam.errors import ModelError
from minisam.sam_import import import_modeling

FAMILY = "vit"

# Encoder-relative names of the transformer blocks' linears: attention (qkv, proj) and MLP (lin1, lin2).
QUANTIZABLE_LINEAR = re.compile(r"^blocks\.\d+\.(?P<group>attn|mlp)\.(qkv|proj|lin1|lin2)$")
# LoRA's usual SAM target (SAMed, MedSA ...): the attention projections inside the blocks; the patch
# embedding is also named "proj", hence the scope.
LORA_TARGETS: tuple[str, ...] = ("qkv", "proj")
LORA_BLOCK_SCOPE = r"blocks\.\d+\."


@dataclass(frozen=True)
class ViTConfig:
    """segment-anything's ViT image encoder.

    Arguments:
      image_size: side of the square model input in pixels (1024 for official SAM).
      patch_size: patch side; the embedding grid is ``image_size // patch_size`` per side.
      embed_dim, depth, num_heads, mlp_ratio: transformer width, blocks, heads and MLP ratio.
      global_attn_indexes: blocks with global attention (the others attend in windows).
      window_size: side of the attention windows.
      out_chans: channels of the image embedding (the prompt encoder's width).
    """

    image_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_attn_indexes", tuple(self.global_attn_indexes))
        if self.image_size % self.patch_size:
            raise ModelError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ModelError(
                f"encoder embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if any(i >= self.depth for i in self.global_attn_indexes):
            raise ModelError(
                f"encoder global_attn_indexes {self.global_attn_indexes} exceed depth {self.depth}"
            )

    @property
    def family(self) -> str:
        return FAMILY

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid."""
        return self.image_size // self.patch_size

    def describe(self) -> str:
        return f"{self.embed_dim}-wide {self.depth}-block ViT at {self.image_size}px"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["global_attn_indexes"] = list(self.global_attn_indexes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ModelError(f"ViT encoder config has unknown fields {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)


Config = ViTConfig  # the family's config class, for the registry


def build(config: ViTConfig) -> torch.nn.Module:
    """An untrained ``ImageEncoderViT`` for ``config``."""
    modeling = import_modeling()
    return modeling.ImageEncoderViT(
        depth=config.depth,
        embed_dim=config.embed_dim,
        img_size=config.image_size,
        mlp_ratio=config.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.num_heads,
        patch_size=config.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=config.global_attn_indexes,
        window_size=config.window_size,
        out_chans=config.out_chans,
    )


def config_from_state(
    state: dict[str, torch.Tensor], prefix: str = "image_encoder."
) -> ViTConfig | None:
    """The architecture of a ViT encoder read off its tensor shapes; None if ``state`` holds no ViT."""
    patch_key, pos_key = prefix + "patch_embed.proj.weight", prefix + "pos_embed"
    if patch_key not in state or pos_key not in state:
        return None
    embed_dim, _, patch, _ = state[patch_key].shape
    grid = state[pos_key].shape[1]
    block_prefix = prefix + "blocks."
    depth = 1 + max(
        (int(k[len(block_prefix) :].split(".")[0]) for k in state if k.startswith(block_prefix)),
        default=-1,
    )
    rel_keys = [f"{block_prefix}{i}.attn.rel_pos_h" for i in range(depth)]
    neck_key = prefix + "neck.0.weight"
    if depth < 1 or neck_key not in state or any(key not in state for key in rel_keys):
        return None
    rel_sizes = [tuple(state[key].shape) for key in rel_keys]
    global_blocks = tuple(i for i, (n, _) in enumerate(rel_sizes) if n == 2 * grid - 1)
    window_sizes = {(n + 1) // 2 for i, (n, _) in enumerate(rel_sizes) if i not in global_blocks}
    head_dim = rel_sizes[0][1]
    mlp_key = f"{block_prefix}0.mlp.lin1.weight"
    mlp_ratio = state[mlp_key].shape[0] / embed_dim if mlp_key in state else 4.0
    return ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=max(1, embed_dim // head_dim),
        global_attn_indexes=global_blocks,
        window_size=window_sizes.pop() if len(window_sizes) == 1 else 14,
        mlp_ratio=mlp_ratio,
        out_chans=state[neck_key].shape[0],
    )


def for_grid(config: ViTConfig, image_size: int, grid: int) -> ViTConfig:
    """``config`` at ``image_size`` px with the patch size that gives a ``grid`` x ``grid`` embedding."""
    if image_size % grid:
        raise ModelError(
            f"image size {image_size} is not a multiple of the {grid}x{grid} embedding grid "
            f"(choose e.g. {grid * max(1, round(image_size / grid))})"
        )
    return config.replace(image_size=image_size, patch_size=image_size // grid)
