"""The TinyViT image encoder family: MobileSAM's and LiteMedSAM's encoder, MiniSAM's own implementation.

TinyViT (Wu et al., ECCV 2022) as adapted for SAM by MobileSAM (Zhang et al. 2023) and LiteMedSAM (the
CVPR 2024 MedSAM-on-laptop baseline): a convolutional patch embedding, one stage of MBConv blocks, then
stages of windowed attention blocks with a learned relative-position bias, patch-merging convolutions
between stages and SAM's convolutional neck. The module and parameter names follow upstream's
``tiny_vit_sam.py``, so the published checkpoints load with strict key matching; the arithmetic follows
upstream step by step, so the embeddings agree to float rounding.

The two published variants differ only in the patch embedding (see :class:`TinyViTConfig`): MobileSAM maps
1024 px onto a 64 x 64 grid, LiteMedSAM 256 px onto the same 64 x 64 grid.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from minisam.errors import ModelError

FAMILY = "tiny_vit"

# How each variant's patch embedding (two Conv-BN layers with a GELU between) samples the image:
# (kernel, stride, padding) of both convolutions. MobileSAM: two 3x3 stride-2 convolutions (1/4 of the
# input side); LiteMedSAM: two 1x1 convolutions that keep the full resolution.
_STEMS: dict[str, tuple[int, int, int]] = {"mobilesam": (3, 2, 1), "litemedsam": (1, 1, 0)}
VARIANTS: tuple[str, ...] = tuple(_STEMS)
# The input size each variant was published for; a state dict does not record it.
_PUBLISHED_IMAGE_SIZE: dict[str, int] = {"mobilesam": 1024, "litemedsam": 256}

# Encoder-relative names of the attention blocks' linears: attention (qkv, proj) and MLP (fc1, fc2). Stage 0
# (``layers.0``) is convolutional (MBConv), so its blocks hold no linears.
QUANTIZABLE_LINEAR = re.compile(
    r"^layers\.[1-9]\d*\.blocks\.\d+\.(?P<group>attn|mlp)\.(qkv|proj|fc1|fc2)$"
)
# LoRA's usual SAM target: the attention projections. Inside the scope (the attention stages' blocks) the
# only leaves named qkv/proj are the attention's, and fc1/fc2 only the MLP's; the unused classifier
# ``head`` and the patch merging convolutions lie outside it.
LORA_TARGETS: tuple[str, ...] = ("qkv", "proj")
LORA_BLOCK_SCOPE = r"layers\.[1-9]\d*\.blocks\.\d+\."


@dataclass(frozen=True)
class TinyViTConfig:
    """TinyViT image encoder as used by MobileSAM and LiteMedSAM.

    Arguments:
      image_size: side of the square model input in pixels.
      embed_dims: channels of each stage; stage 0 is convolutional (MBConv blocks), the others attend.
      depths: blocks per stage (each >= 1; at least two stages).
      num_heads: attention heads of each *attention* stage (stages 1 .. n-1, so one fewer than
        ``depths``): stage 0 has no attention, and upstream's value for it is unused and not in the weights.
      window_sizes: attention window side of each attention stage (same length as ``num_heads``);
        grids that are not a multiple are zero-padded, as upstream does.
      variant: the patch embedding. "mobilesam": two 3x3 stride-2 convolutions (grid = input / 4);
        "litemedsam": two 1x1 convolutions (grid = input). In both, every patch merging halves the grid
        except the last, which keeps it (upstream's stride-1 rule for its last stage), so the embedding
        grid is ``image_size / (stem stride (4 or 1) * 2 ** (stages - 2))``: 1024 / 16 = 256 / 4 = 64.
      mlp_ratio: hidden width of the attention blocks' MLP relative to the stage width.
      mbconv_expand_ratio: hidden width of the MBConv blocks relative to stage 0's width.
      local_conv_size: kernel of the depthwise convolution between attention and MLP (odd).
      out_chans: channels of the image embedding (the neck's output; SAM's prompt width, 256).
      head_classes: outputs of the ImageNet classifier head (``norm_head`` + ``head``) that some
        checkpoints still carry (MobileSAM: 1000); it is built only so they load strictly and is never
        run. 0: no head (LiteMedSAM).
    """

    image_size: int
    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_sizes: tuple[int, ...]
    variant: str
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256
    head_classes: int = 0

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ModelError(f"TinyViT {name} must be a sequence of integers, not {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("mlp_ratio", "mbconv_expand_ratio"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ModelError(f"TinyViT {name} must be a positive number, not {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("image_size", "local_conv_size", "out_chans"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ModelError(f"TinyViT {name} must be a positive integer, not {value!r}")
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            values = getattr(self, name)
            if not values or not all(_is_int(v) and v >= 1 for v in values):
                raise ModelError(f"TinyViT {name} must be positive integers, not {values!r}")
        if not _is_int(self.head_classes) or self.head_classes < 0:
            raise ModelError(
                f"TinyViT head_classes must be an integer >= 0, not {self.head_classes!r}"
            )
        if self.variant not in _STEMS:
            raise ModelError(f"TinyViT variant must be one of {VARIANTS}, not {self.variant!r}")
        stages = len(self.depths)
        if stages < 2 or len(self.embed_dims) != stages:
            raise ModelError(
                f"TinyViT needs >= 2 stages with one width each: depths {self.depths}, "
                f"embed_dims {self.embed_dims}"
            )
        if len(self.num_heads) != stages - 1 or len(self.window_sizes) != stages - 1:
            raise ModelError(
                f"TinyViT num_heads {self.num_heads} and window_sizes {self.window_sizes} need one entry "
                f"per attention stage ({stages - 1}: stage 0 is convolutional)"
            )
        for dim, heads in zip(self.embed_dims[1:], self.num_heads, strict=True):
            if dim % heads:
                raise ModelError(f"TinyViT stage width {dim} is not divisible by its {heads} heads")
        if self.local_conv_size % 2 == 0:
            raise ModelError(f"TinyViT local_conv_size must be odd, not {self.local_conv_size}")
        if self.image_size % self.patch_size:
            raise ModelError(
                f"TinyViT image_size {self.image_size} is not a multiple of {self.patch_size} "
                f"(the {self.variant} stem and {stages - 2} halving patch mergings)"
            )

    @property
    def family(self) -> str:
        return FAMILY

    @property
    def patch_size(self) -> int:
        """Input pixels per embedding cell along a side: the stem's stride times the halving mergings."""
        return _patch_size(self.variant, len(self.depths))

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid."""
        return self.image_size // self.patch_size

    def describe(self) -> str:
        dims = "/".join(map(str, self.embed_dims))
        depths = "/".join(map(str, self.depths))
        return f"TinyViT ({self.variant}) {dims} wide x {depths} blocks at {self.image_size}px"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            data[name] = list(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyViTConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ModelError(f"TinyViT encoder config has unknown fields {unknown}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ModelError(f"TinyViT encoder config lacks fields {missing}")
        return cls(**data)

    def replace(self, **changes: Any) -> TinyViTConfig:
        return dataclasses.replace(self, **changes)


def _patch_size(variant: str, stages: int) -> int:
    """Input pixels per embedding cell: two stem convolutions, then all mergings but the last halve."""
    _, stride, _ = _STEMS[variant]
    return stride * stride * 2 ** (stages - 2)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# TinyViT-5M, the encoder of both published models (upstream's embed_dims [64, 128, 160, 320], depths
# [2, 2, 6, 2], num_heads [2, 4, 5, 10], window_sizes [7, 7, 14, 7]; stage 0's head count and window are
# unused there).
_TINY_VIT_5M: dict[str, Any] = {
    "embed_dims": (64, 128, 160, 320),
    "depths": (2, 2, 6, 2),
    "num_heads": (4, 5, 10),
    "window_sizes": (7, 14, 7),
}
MOBILESAM = TinyViTConfig(image_size=1024, variant="mobilesam", head_classes=1000, **_TINY_VIT_5M)
LITEMEDSAM = TinyViTConfig(image_size=256, variant="litemedsam", **_TINY_VIT_5M)
# For tests and quick experiments: LiteMedSAM's layout at 128 px onto a 32 x 32 grid, tens of milliseconds per
# image. Its windows (7 on 64, 8 on 32, 5 on 32) cover the padded and the exact partition.
TINY = TinyViTConfig(
    image_size=128,
    embed_dims=(16, 32, 48, 64),
    depths=(1, 1, 2, 1),
    num_heads=(2, 3, 4),
    window_sizes=(7, 8, 5),
    variant="litemedsam",
    out_chans=64,
)


class ConvBN(nn.Sequential):
    """Bias-free convolution ``c`` followed by batch norm ``bn`` (upstream's ``Conv2d_BN``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chans, out_chans, kernel, stride, padding, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_chans))
        nn.init.constant_(self.bn.weight, bn_weight)
        nn.init.zeros_(self.bn.bias)


class PatchEmbed(nn.Module):
    """The stem: Conv-BN, GELU, Conv-BN from 3 channels to ``dim`` (``seq.0`` and ``seq.2``)."""

    def __init__(self, dim: int, variant: str) -> None:
        super().__init__()
        kernel, stride, padding = _STEMS[variant]
        self.seq = nn.Sequential(
            ConvBN(3, dim // 2, kernel, stride, padding),
            nn.GELU(),
            ConvBN(dim // 2, dim, kernel, stride, padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        # The residual branch starts at zero (upstream's init), so a fresh block is the identity + GELU.
        self.conv3 = ConvBN(hidden, dim, bn_weight=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Between stages: 1x1 Conv-BN to the next width, 3x3 depthwise Conv-BN (stride 2 or 1), 1x1 Conv-BN."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C', H', W')."""
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on the (B, C, H, W) feature map, then a patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


def _relative_bias_index(window: int) -> torch.Tensor:
    """(N, N) index into a window's biases, N = window ** 2: one bias per |dy|, |dx| offset pair.

    Upstream numbers the offsets in order of first appearance while it walks all point pairs row by row;
    the first point (0, 0) already meets every offset (dy, dx) in row-major order, so the number is
    ``|dy| * window + |dx|``.
    """
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return (rows[:, None] - rows[None, :]).abs() * window + (cols[:, None] - cols[None, :]).abs()


class Attention(nn.Module):
    """Multi-head self-attention within one window, with a learned bias per relative offset.

    ``qkv`` yields, per head, the query, key and value side by side (upstream's layout, which the
    weights assume). The bias is indexed afresh each call (upstream caches it in eval mode) so that it
    always follows the loaded or trained ``attention_biases``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # Derived from the window alone, so not saved (upstream's buffer is not persistent either).
        self.register_buffer("attention_bias_idxs", _relative_bias_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens of B windows -> (B, N, C)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split(self.head_dim, dim=3))
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Pre-norm MLP: LayerNorm, fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), a depthwise Conv-BN over the grid, then the MLP (residual)."""

    def __init__(
        self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int
    ) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, H*W, C) row-major tokens -> the same."""
        batch, tokens, dim = x.shape
        w = self.window
        if height == w and width == w:
            attended = self.attn(x)
        else:
            # Zero-pad the grid to whole windows *before* the attention's LayerNorm, as upstream does: the
            # padded tokens take part as keys, so padding after the norm would change the numbers.
            grid = x.reshape(batch, height, width, dim)
            pad_b, pad_r = -height % w, -width % w
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            rows, cols = (height + pad_b) // w, (width + pad_r) // w
            windows = grid.reshape(batch, rows, w, cols, w, dim).transpose(2, 3)
            windows = self.attn(windows.reshape(batch * rows * cols, w * w, dim))
            grid = windows.reshape(batch, rows, cols, w, w, dim).transpose(2, 3)
            grid = grid.reshape(batch, rows * w, cols * w, dim)[:, :height, :width]
            attended = grid.reshape(batch, tokens, dim)
        x = x + attended
        x = self.local_conv(x.transpose(1, 2).reshape(batch, dim, height, width))
        x = x.reshape(batch, dim, tokens).transpose(1, 2)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    """Stages 1 .. n-1: TinyViT blocks on the flattened grid, then a patch merging (all but the last)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        local_conv: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C', H', W')."""
        batch, dim, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x, height, width)
        x = x.reshape(batch, height, width, dim).permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (SAM's neck; eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class TinyViT(nn.Module):
    """The encoder: (B, 3, S, S) normalised images -> (B, out_chans, g, g) embeddings.

    ``img_size`` is the input side, as segment-anything's ``Sam.preprocess`` and ``SamPredictor`` expect of
    an image encoder.
    """

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.image_size
        dims, depths, stages = config.embed_dims, config.depths, len(config.depths)
        self.patch_embed = PatchEmbed(dims[0], config.variant)

        def merging(stage: int) -> PatchMerging:
            # Every merging halves the grid except the last (upstream's stride-1 rule for its last stage).
            return PatchMerging(dims[stage], dims[stage + 1], 1 if stage == stages - 2 else 2)

        layers: list[nn.Module] = [
            ConvStage(dims[0], depths[0], config.mbconv_expand_ratio, merging(0))
        ]
        for i in range(1, stages):
            layers.append(
                AttentionStage(
                    dims[i],
                    depths[i],
                    config.num_heads[i - 1],
                    config.window_sizes[i - 1],
                    config.mlp_ratio,
                    config.local_conv_size,
                    merging(i) if i < stages - 1 else None,
                )
            )
        self.layers = nn.ModuleList(layers)
        if config.head_classes:
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], config.head_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )
        self.apply(_init_weights)

    def train(self, mode: bool = True) -> TinyViT:
        """Train mode for everything but the batch norms of frozen layers.

        A frozen convolution (its BatchNorm's affine parameters do not require gradients: a LoRA or
        QAT base) keeps normalising with the running statistics it was trained with; in train mode it
        would normalise with each batch's statistics and overwrite them. A trainable one (a student
        being distilled) trains as usual.
        """
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d) and not module.weight.requires_grad:
                module.train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (size, size):
            raise ModelError(
                f"TinyViT expects a (B, 3, {size}, {size}) input, not {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


def _init_weights(module: nn.Module) -> None:
    """Upstream's initialisation (it only matters for training from scratch)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


Config = TinyViTConfig  # the family's config class, for the registry


def build(config: TinyViTConfig) -> torch.nn.Module:
    """An untrained TinyViT encoder for ``config``, in eval mode (see :meth:`TinyViT.train` for the batch
    norms of frozen layers)."""
    return TinyViT(config).eval()


def config_from_state(
    state: dict[str, torch.Tensor], prefix: str = "image_encoder."
) -> TinyViTConfig | None:
    """The architecture of a TinyViT encoder read off its tensor shapes; None if ``state`` holds no TinyViT.

    Widths, depths, heads (``attention_biases`` rows), windows (its columns are window ** 2), ratios,
    kernel sizes and the variant (the stem's kernel) are in the weights; the input size is not (the network
    is convolutional and windowed), so it is the variant's published one: 1024 (MobileSAM), 256
    (LiteMedSAM).
    """
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    stem_key, mbconv_key, neck_key = (
        "patch_embed.seq.0.c.weight",
        "layers.0.blocks.0.conv1.c.weight",
        "neck.0.weight",
    )
    if not all(key in sub for key in (stem_key, mbconv_key, neck_key)):
        return None
    kernel = sub[stem_key].shape[-1]
    variant = next((name for name, (k, _, _) in _STEMS.items() if k == kernel), None)
    if variant is None:
        raise ModelError(
            f"TinyViT weights with a {kernel}x{kernel} patch embedding are of no known variant"
        )
    depths = _count_blocks(sub)
    dims = (
        [sub["patch_embed.seq.2.c.weight"].shape[0]] if "patch_embed.seq.2.c.weight" in sub else []
    )
    heads: list[int] = []
    windows: list[int] = []
    for stage in range(1, len(depths)):
        keys = [
            f"layers.{stage}.blocks.{block}.attn.attention_biases" for block in range(depths[stage])
        ]
        shapes = {tuple(sub[key].shape) for key in keys if key in sub}
        norm_key = f"layers.{stage}.blocks.0.attn.norm.weight"
        if len(shapes) != 1 or not all(key in sub for key in keys) or norm_key not in sub:
            raise ModelError(
                f"TinyViT weights: stage {stage}'s attention biases are missing or differ"
            )
        (stage_heads, offsets) = shapes.pop()
        window = math.isqrt(offsets)
        if window * window != offsets:
            raise ModelError(
                f"TinyViT weights: stage {stage} has {offsets} biases, not a square window"
            )
        dims.append(sub[norm_key].shape[0])
        heads.append(stage_heads)
        windows.append(window)
    fc1_key, local_key = "layers.1.blocks.0.mlp.fc1.weight", "layers.1.blocks.0.local_conv.c.weight"
    if len(dims) != len(depths) or fc1_key not in sub or local_key not in sub:
        raise ModelError("TinyViT weights lack their stem, MLP or local convolution tensors")
    head_key = "head.weight"
    return TinyViTConfig(
        image_size=_PUBLISHED_IMAGE_SIZE[variant],
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_sizes=tuple(windows),
        variant=variant,
        mlp_ratio=sub[fc1_key].shape[0] / dims[1],
        mbconv_expand_ratio=sub[mbconv_key].shape[0] / dims[0],
        local_conv_size=sub[local_key].shape[-1],
        out_chans=sub[neck_key].shape[0],
        head_classes=sub[head_key].shape[0] if head_key in sub else 0,
    )


def _count_blocks(sub: dict[str, torch.Tensor]) -> list[int]:
    """Blocks per stage from ``layers.<stage>.blocks.<block>.`` keys (stages numbered from 0, no gaps)."""
    blocks: dict[int, set[int]] = {}
    for key in sub:
        parts = key.split(".")
        if len(parts) > 3 and parts[0] == "layers" and parts[2] == "blocks":
            blocks.setdefault(int(parts[1]), set()).add(int(parts[3]))
    stages = sorted(blocks)
    if stages != list(range(len(stages))) or any(
        sorted(b) != list(range(len(b))) for b in blocks.values()
    ):
        raise ModelError(f"TinyViT weights have gaps in their stages or blocks: {stages}")
    return [len(blocks[s]) for s in stages]


def for_grid(config: TinyViTConfig, image_size: int, grid: int) -> TinyViTConfig:
    """``config`` at ``image_size`` px with the variant whose stem gives a ``grid`` x ``grid`` embedding.

    A TinyViT's grid is fixed by its stem and its number of stages, so only sizes ``grid * patch size``
    of one of the variants fit; the config's own variant is preferred.
    """
    stages = len(config.depths)
    for variant in sorted(VARIANTS, key=lambda v: v != config.variant):
        if image_size == grid * _patch_size(variant, stages):
            return config.replace(variant=variant, image_size=image_size)
    sizes = " or ".join(f"{grid * _patch_size(v, stages)} ({v})" for v in VARIANTS)
    raise ModelError(
        f"a {stages}-stage TinyViT gives a {grid}x{grid} embedding at image size {sizes}, not {image_size}"
    )
