"""Checkpoints: segment-anything's official ``.pth`` layout and MiniSAM's self-describing safetensors.

A MiniSAM checkpoint is one ``.safetensors`` file whose metadata holds the :class:`SamConfig` as JSON (and an
optional model card), so the file alone rebuilds its model. Official ``.pth`` files are plain state dicts
(image_encoder.*, prompt_encoder.*, mask_decoder.*); their architecture is read off the tensor shapes.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minisam.atomic import atomic_output
from minisam.encoders import encoder_config_from_state
from minisam.errors import ModelError
from minisam.model_config import PRESETS, SamConfig, build_sam, describe

FORMAT = "minisam.sam/1"
_ENCODER = "image_encoder."


@dataclass
class LoadedModel:
    """A ready-to-run SAM model and where it came from."""

    sam: torch.nn.Module
    config: SamConfig
    name: str
    source: Path | None = None
    card: dict[str, Any] = field(default_factory=dict)
    _hash: str | None = field(default=None, repr=False)

    def base_hash(self) -> str:
        """:func:`weights_hash` of the model as loaded (computed once, before any quantization)."""
        if self._hash is None:
            # quantize_encoder records the fp32 hash on the module before changing any layer
            self._hash = getattr(self.sam, "minisam_base_hash", None) or weights_hash(self.sam)
        return self._hash


def weights_hash(sam: torch.nn.Module) -> str:
    """SHA-256 (hex, first 16 chars) over a model's tensor names, shapes, dtypes and bytes, in name order.

    Identifies a base model for adapters: an adapter trained on one base must not be applied to another.
    Computed on the full-precision weights, before any quantization.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(sam.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tuple(data.shape)}:{data.dtype};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


def save_checkpoint(
    sam: torch.nn.Module,
    config: SamConfig,
    path: str | Path,
    card: dict[str, Any] | None = None,
    storage_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``sam``'s weights and ``config`` (and an optional model card) atomically to a safetensors file.

    ``storage_dtype`` torch.float16 halves the file: floating-point tensors are stored in half
    precision (loading casts them back to the model's float32).
    """
    path = Path(path)
    tensors = {
        k: (v.to(storage_dtype) if v.is_floating_point() else v).detach().to("cpu").contiguous()
        for k, v in sam.state_dict().items()
    }
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict())}
    if card:
        metadata["card"] = json.dumps(card)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata dict of a safetensors file, or a one-line ModelError if it cannot be parsed."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None


def load_minisam_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild the model stored in a MiniSAM safetensors checkpoint."""
    path = Path(path)
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ModelError(
            f"checkpoint {path} has no MiniSAM model config in its metadata (format {FORMAT})"
        )
    try:
        config = SamConfig.from_dict(json.loads(metadata["config"]))
        card = json.loads(metadata.get("card", "{}"))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"checkpoint {path} has an invalid model config ({exc})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    sam = build_sam(config)
    _load_state(sam, state, path, config)
    return LoadedModel(
        sam=sam, config=config, name=card.get("name", path.stem), source=path, card=card
    )


def load_official_checkpoint(path: str | Path, arch: str | None = None) -> LoadedModel:
    """Load a ``.pth`` state dict in segment-anything's key layout (``torch.load(weights_only=True)``).

    Arguments:
      path: the checkpoint file.
      arch: a preset name; when None the architecture is inferred from the tensor shapes and matched to a
        preset when one fits (a ViT file named ``medsam*`` gets MedSAM's preprocessing).
    """
    path = Path(path)
    state = _torch_load_state_dict(path)
    if arch is not None:
        if arch not in PRESETS:
            raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(PRESETS)}")
        config = PRESETS[arch]
    else:
        config = infer_config(state, path)
        # MedSAM ships ViT-B weights under its own name; LiteMedSAM's TinyViT is recognised by its shapes.
        if config.family == "vit" and "medsam" in path.name.lower():
            config = config.replace(**_preprocessing_of(PRESETS["medsam_vit_b"]))
    sam = build_sam(config)
    _load_state(sam, state, path, config)
    return LoadedModel(sam=sam, config=config, name=path.stem, source=path)


def save_official_layout(sam: torch.nn.Module, path: str | Path) -> Path:
    """Write a plain state dict in segment-anything's layout (as the official ``.pth`` files are), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in sam.state_dict().items()}, tmp)
    return path


def _torch_load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelError(f"checkpoint {path} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"checkpoint {path} cannot be read: truncated, corrupt or not a state dict ({reason})"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints (MedSAM fine-tuning) wrap the state dict
    if not isinstance(state, dict) or not any(str(k).startswith(_ENCODER) for k in state):
        raise ModelError(f"checkpoint {path} is not a SAM state dict (no {_ENCODER}* keys)")
    return state


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise ModelError(
            f"checkpoint {path} lacks {key}: not a SAM checkpoint or another architecture"
        )
    return tuple(state[key].shape)


def infer_config(state: dict[str, torch.Tensor], path: Path = Path("<state dict>")) -> SamConfig:
    """Read a SAM architecture off a state dict's tensor shapes; prefer an exactly matching preset.

    The image encoder is recognised by its family (:mod:`minisam.encoders`); a matching preset brings
    its preprocessing along (a LiteMedSAM-shaped TinyViT gets LiteMedSAM's).
    """
    encoder = encoder_config_from_state(state, _ENCODER)
    if encoder is None:
        raise ModelError(
            f"checkpoint {path} has an image encoder of no known family "
            "(segment-anything's ViT or TinyViT): another architecture"
        )
    prompt_dim = _shape(state, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", path)
    decoder_depth = 1 + max(
        (int(k.split(".")[3]) for k in state if k.startswith("mask_decoder.transformer.layers.")),
        default=-1,
    )
    mlp_dim = _shape(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight", path)[0]
    iou_hidden = _shape(state, "mask_decoder.iou_prediction_head.layers.0.weight", path)[0]
    mask_in = _shape(state, "prompt_encoder.mask_downscaling.0.weight", path)[0] * 4
    if prompt_dim[1] * 2 != encoder.out_chans:
        raise ModelError(
            f"checkpoint {path}: the image encoder gives {encoder.out_chans} channels but the prompt "
            f"encoder expects {prompt_dim[1] * 2}"
        )
    inferred = SamConfig(
        encoder=encoder,
        mask_in_chans=mask_in,
        decoder_depth=decoder_depth,
        decoder_mlp_dim=mlp_dim,
        # The head count of the decoder's attention does not change any tensor shape; SAM uses 8.
        decoder_num_heads=8 if encoder.out_chans % 8 == 0 else 1,
        iou_head_hidden_dim=iou_hidden,
    )
    for name in ("vit_b", "vit_l", "vit_h", "mobilesam", "litemedsam"):
        if _architecture_of(PRESETS[name]) == _architecture_of(inferred):
            return PRESETS[name]
    return inferred


_PREPROCESSING = ("pixel_mean", "pixel_std", "resize_mode", "resize_filter", "intensity_scaling")


def _architecture_of(config: SamConfig) -> dict[str, Any]:
    data = config.to_dict()
    for key in (*_PREPROCESSING, "extra", "decoder_num_heads"):
        data.pop(key)
    return data


def _preprocessing_of(config: SamConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in _PREPROCESSING}


def check_state_fits(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, what: str
) -> None:
    """Raise a one-line ModelError unless ``state`` has exactly ``expected``'s keys and shapes.

    Arguments:
      expected: the model's state dict (or the part of it the file must provide).
      state: the tensors read from the checkpoint ``path``.
      what: how to name the target in the message, e.g. "the vit_b architecture".
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {path} does not fit {what}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors (e.g. {(missing or unexpected)[0]})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"checkpoint {path} does not fit {what}: {key} has shape "
                f"{tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )


def _load_state(
    sam: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, config: SamConfig
) -> None:
    check_state_fits(sam.state_dict(), state, path, f"the {describe(config)} architecture")
    sam.load_state_dict(state, strict=True)
    sam.eval()
