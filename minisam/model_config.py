"""SAM architectures as data: an image encoder of a registered family, SAM's prompt encoder and mask decoder.

A :class:`SamConfig` fully describes a model, so a checkpoint that stores its config next to the weights rebuilds
its model from the file alone. Configuration is code: the presets below are the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from minisam.encoders import (
    EncoderConfig,
    build_encoder,
    encoder_config_from_dict,
    encoder_config_to_dict,
    tiny_vit,
)
from minisam.encoders.vit import ViTConfig
from minisam.errors import ModelError
from minisam.sam_import import import_modeling

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


RESIZE_MODES = ("longest_side", "stretch")
RESIZE_FILTERS = ("bilinear", "pil_bilinear", "area")
INTENSITY_SCALINGS = ("fixed", "minmax")

# Flat keys of the configs MiniSAM wrote before encoder families existed, and their ViT field names.
_LEGACY_VIT_KEYS = {
    "image_size": "image_size",
    "patch_size": "patch_size",
    "encoder_embed_dim": "embed_dim",
    "encoder_depth": "depth",
    "encoder_num_heads": "num_heads",
    "encoder_global_attn_indexes": "global_attn_indexes",
    "encoder_window_size": "window_size",
    "encoder_mlp_ratio": "mlp_ratio",
    "prompt_embed_dim": "out_chans",
}


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to build a SAM-architecture model and to prepare its input.

    Arguments:
      encoder: the image encoder's configuration, tagged with its family (see :mod:`minisam.encoders`);
        its ``image_size`` is the model's square input and its ``out_chans`` the prompt width.
      mask_in_chans: hidden channels of the prompt encoder's mask downscaling.
      decoder_*: two-way transformer of the mask decoder.
      pixel_mean / pixel_std: normalisation applied by ``Sam.preprocess`` to 0..255 RGB input.
      resize_mode: "longest_side" (SAM: keep aspect, pad bottom/right) or "stretch" (MedSAM: resize to square).
      resize_filter: "bilinear" (antialiased, on float values: MiniSAM's own models), "pil_bilinear"
        (SAM's predictor: PIL's bilinear on the 8-bit image) or "area" (LiteMedSAM's cv2 INTER_AREA on
        8-bit images); see :meth:`minisam.transforms.ResizeTransform.image_to_input`.
      intensity_scaling: "fixed" (0..255 as given) or "minmax" (LiteMedSAM: each resized image stretched to
        its own min..max before normalisation).
    """

    encoder: EncoderConfig = field(default_factory=ViTConfig)
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    resize_mode: str = "longest_side"
    resize_filter: str = "bilinear"
    intensity_scaling: str = "fixed"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixel_mean", tuple(self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(self.pixel_std))
        for name, allowed in (
            ("resize_mode", RESIZE_MODES),
            ("resize_filter", RESIZE_FILTERS),
            ("intensity_scaling", INTENSITY_SCALINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ModelError(
                    f"{name} must be one of {', '.join(map(repr, allowed))}, "
                    f"not {getattr(self, name)!r}"
                )
        if self.prompt_embed_dim % self.decoder_num_heads:
            raise ModelError(
                f"prompt width {self.prompt_embed_dim} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )

    @property
    def family(self) -> str:
        """The image encoder's family ("vit", "tiny_vit")."""
        return self.encoder.family

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels."""
        return self.encoder.image_size

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid."""
        return self.encoder.embedding_size

    @property
    def prompt_embed_dim(self) -> int:
        """Channels of the image embedding and of the prompt tokens (256 for SAM)."""
        return self.encoder.out_chans

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["encoder"] = encoder_config_to_dict(self.encoder)
        data["pixel_mean"] = list(self.pixel_mean)
        data["pixel_std"] = list(self.pixel_std)
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamConfig:
        """Inverse of :meth:`to_dict`; also reads the flat ViT fields of configs written before v0.2."""
        values = dict(data)
        legacy = {new: values.pop(old) for old, new in _LEGACY_VIT_KEYS.items() if old in values}
        if "encoder" in values:
            if legacy:
                raise ModelError(f"model config mixes 'encoder' with flat fields {sorted(legacy)}")
            values["encoder"] = encoder_config_from_dict(values["encoder"])
        else:
            values["encoder"] = ViTConfig(**legacy)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"model config has unknown fields {unknown}")
        return cls(**values)

    def replace(self, **changes: Any) -> SamConfig:
        return dataclasses.replace(self, **changes)

    def replace_encoder(self, **changes: Any) -> SamConfig:
        """This config with fields of its encoder config changed."""
        return self.replace(encoder=self.encoder.replace(**changes))


_VIT_B = SamConfig()
_LITE_DECODER = {"pixel_mean": (0.0, 0.0, 0.0), "pixel_std": (255.0, 255.0, 255.0)}
PRESETS: dict[str, SamConfig] = {
    "vit_b": _VIT_B,
    "vit_l": _VIT_B.replace_encoder(
        embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_h": _VIT_B.replace_encoder(
        embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
    # MedSAM: vit_b weights fine-tuned on medical images; its inference scales intensities to [0, 1] and
    # resizes straight to 1024x1024 instead of SAM's ImageNet normalisation and aspect-preserving pad.
    "medsam_vit_b": _VIT_B.replace(resize_mode="stretch", **_LITE_DECODER),
    # MobileSAM: TinyViT-5M distilled from SAM ViT-H, SAM's decoder and preprocessing, 1024 px.
    "mobilesam": SamConfig(encoder=tiny_vit.MOBILESAM, resize_filter="pil_bilinear"),
    # LiteMedSAM: TinyViT distilled from MedSAM, 256 px onto a 64x64 grid; its inference resizes the
    # longest side with pixel-area averaging, stretches each image to [0, 1] (min-max) and pads with 0.
    "litemedsam": SamConfig(
        encoder=tiny_vit.LITEMEDSAM,
        resize_filter="area",
        intensity_scaling="minmax",
        **_LITE_DECODER,
    ),
    # Compact student for CPU use: ViT-S-like encoder, SAM's prompt encoder and mask decoder unchanged.
    "compact": _VIT_B.replace_encoder(
        image_size=512,
        embed_dim=384,
        depth=8,
        num_heads=6,
        global_attn_indexes=(3, 7),
        window_size=8,
    ),
    # Small: the v0 embedded default (trained from scratch on CPU); 256 px input, 16x16 embedding grid.
    "small": _VIT_B.replace_encoder(
        image_size=256,
        embed_dim=256,
        depth=6,
        num_heads=8,
        global_attn_indexes=(2, 5),
        window_size=8,
    ),
    # Student: the distilled embedded default; 256 px like "small" (same 16x16 grid, so it keeps the
    # teacher's decoder), 160 wide x 4 blocks: about a third of small's encoder compute.
    "student": _VIT_B.replace_encoder(
        image_size=256,
        embed_dim=160,
        depth=4,
        num_heads=5,
        global_attn_indexes=(1, 3),
        window_size=8,
    ),
    # Tiny: for tests and quick experiments on a laptop CPU (a forward pass takes milliseconds).
    "tiny": SamConfig(
        encoder=ViTConfig(
            image_size=128,
            patch_size=8,
            embed_dim=64,
            depth=2,
            num_heads=4,
            global_attn_indexes=(1,),
            window_size=8,
            out_chans=64,
        ),
        decoder_depth=1,
        decoder_mlp_dim=128,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
    # Tiny TinyViT: the same for the TinyViT family.
    "tiny_vit": SamConfig(
        encoder=tiny_vit.TINY.replace(out_chans=64),
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


def preset_name(config: SamConfig) -> str | None:
    """The name of the preset equal to ``config``, if any."""
    return next((name for name, candidate in PRESETS.items() if candidate == config), None)


def describe(config: SamConfig) -> str:
    """A preset's name, or a short description of the encoder."""
    return preset_name(config) or config.encoder.describe()


def build_sam(config: SamConfig) -> torch.nn.Module:
    """Build an untrained ``segment_anything.modeling.Sam`` for ``config`` (eval mode, fp32, CPU)."""
    modeling = import_modeling()
    grid = config.embedding_size
    sam = modeling.Sam(
        image_encoder=build_encoder(config.encoder),
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
