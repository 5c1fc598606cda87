"""SAM architectures as data: official variants and small configurable ones, built from segment-anything's classes.

A :class:`SamConfig` fully describes a model, so a checkpoint that stores its config next to the weights rebuilds
its model from the file alone. Configuration is code: the presets below are the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from minisam.errors import ModelError
from minisam.sam_import import import_modeling

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to build a SAM-architecture model.

    Arguments:
      image_size: side of the square model input in pixels (1024 for official SAM).
      patch_size: ViT patch size; the image embedding grid is ``image_size // patch_size`` per side.
      encoder_*: ViT image encoder width, depth, heads, global-attention blocks and window size.
      prompt_embed_dim: channels of the image embedding and of the prompt tokens (256 for SAM).
      decoder_*: two-way transformer of the mask decoder.
      pixel_mean / pixel_std: normalisation applied by ``Sam.preprocess`` to 0..255 RGB input.
      resize_mode: "longest_side" (SAM: keep aspect, pad bottom/right) or "stretch" (MedSAM: resize to square).
    """

    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    resize_mode: str = "longest_side"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ModelError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ModelError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_num_heads {self.encoder_num_heads}"
            )
        if any(i >= self.encoder_depth for i in self.encoder_global_attn_indexes):
            raise ModelError(
                f"encoder_global_attn_indexes {self.encoder_global_attn_indexes} exceed depth {self.encoder_depth}"
            )
        if self.resize_mode not in ("longest_side", "stretch"):
            raise ModelError(
                f"resize_mode must be 'longest_side' or 'stretch', not {self.resize_mode!r}"
            )

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        data["pixel_mean"] = list(self.pixel_mean)
        data["pixel_std"] = list(self.pixel_std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"model config has unknown fields {unknown}")
        values = dict(data)
        for key in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def replace(self, **changes: Any) -> SamConfig:
        return dataclasses.replace(self, **changes)


_VIT_B = SamConfig()
PRESETS: dict[str, SamConfig] = {
    "vit_b": _VIT_B,
    "vit_l": _VIT_B.replace(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": _VIT_B.replace(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    # MedSAM: vit_b weights fine-tuned on medical images; its inference scales intensities to [0, 1] and
    # resizes straight to 1024x1024 instead of SAM's ImageNet normalisation and aspect-preserving pad.
    "medsam_vit_b": _VIT_B.replace(
        pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0), resize_mode="stretch"
    ),
    # Compact student for CPU use: ViT-S-like encoder, SAM's prompt encoder and mask decoder unchanged.
    "compact": _VIT_B.replace(
        image_size=512,
        encoder_embed_dim=384,
        encoder_depth=8,
        encoder_num_heads=6,
        encoder_global_attn_indexes=(3, 7),
        encoder_window_size=8,
    ),
    # Small: the v0 embedded default (trained from scratch on CPU); 256 px input, 16x16 embedding grid.
    "small": _VIT_B.replace(
        image_size=256,
        encoder_embed_dim=256,
        encoder_depth=6,
        encoder_num_heads=8,
        encoder_global_attn_indexes=(2, 5),
        encoder_window_size=8,
    ),
    # Student: the distilled embedded default; 256 px like "small" (same 16x16 grid, so it keeps the
    # teacher's decoder), 160 wide x 4 blocks: about a third of small's encoder compute.
    "student": _VIT_B.replace(
        image_size=256,
        encoder_embed_dim=160,
        encoder_depth=4,
        encoder_num_heads=5,
        encoder_global_attn_indexes=(1, 3),
        encoder_window_size=8,
    ),
    # Tiny: for tests and quick experiments on a laptop CPU (a forward pass takes milliseconds).
    "tiny": _VIT_B.replace(
        image_size=128,
        patch_size=8,
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1,),
        encoder_window_size=8,
        prompt_embed_dim=64,
        decoder_depth=1,
        decoder_mlp_dim=128,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
}


def preset(name: str) -> SamConfig:
    """The configuration registered under ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(PRESETS)}") from None


def build_sam(config: SamConfig) -> torch.nn.Module:
    """Build an untrained ``segment_anything.modeling.Sam`` for ``config`` (eval mode, fp32, CPU)."""
    modeling = import_modeling()
    grid = config.embedding_size
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.encoder_mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            window_size=config.encoder_window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    sam.minisam_config = config
    return sam.eval()


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
