"""The one resolver of ``--runtime`` and ``--precision``: which encoder runtime runs, or why not.

``auto`` picks OpenVINO for an fp32 encoder on the CPU when the package imports, torch otherwise
(CUDA, a quantized encoder); if OpenVINO then fails to export or load the encoder, ``auto`` runs torch
and says why. A runtime asked for by name never falls back: it runs or the call fails with one line.
"""

from __future__ import annotations

import importlib.util
import sys

import torch

from minisam.errors import ModelError, PromptError
from minisam.runtime.compiled import CompiledEncoder, TorchEncoder

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "f32", "bf16", "int8")  # int8: the encoder, calibrated first (int8_encoder)
# OpenVINO's inference precision per part when --precision is auto. Encoder: f32, whose masks are torch's
# (Dice 1.0000 on every evaluation set of docs/eval); bf16 is 1.5x faster again on a CPU with bf16
# instructions but moves LiteMedSAM's embeddings by 4.7 % and its masks to Dice 0.995 (box) / 0.980 (one
# click) against torch's, below the 0.99 target. Decoder: bf16, 1.7x its f32 time, masks Dice 0.998-0.9994
# against torch's (min 0.986), Dice against the truth unchanged to 3 decimals on every set:
# docs/bench/encoder_runtimes.md.
OPENVINO_DEFAULT_PRECISION = {"encoder": "f32", "decoder": "bf16"}
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
_INSTALL = {"openvino": "pip install openvino onnx", "onnxruntime": "pip install onnxruntime onnx"}


def check_runtime(value: str, flag: str = "--runtime") -> str:
    """``value`` normalised (case, spaces) if it names a runtime, else a one-line PromptError."""
    key = str(value).strip().lower()
    if key not in RUNTIMES:
        raise PromptError(f"{flag} {value!r}: choose one of {', '.join(RUNTIMES)}")
    return key


def check_precision(value: str, runtime: str = "auto", flag: str = "--precision") -> str:
    """``value`` normalised, refused when it is unknown or the runtime asked for cannot honour it."""
    key = str(value).strip().lower()
    if key not in PRECISIONS:
        raise PromptError(f"{flag} {value!r}: choose one of {', '.join(PRECISIONS)}")
    if key in ("bf16", "int8") and runtime in ("torch", "onnxruntime"):
        raise PromptError(f"{flag} {key} applies to the openvino runtime; {runtime} runs f32")
    return key


def _importable(runtime: str) -> bool:
    package = _PACKAGES[runtime]
    if sys.modules.get(package) is not None:
        return True
    try:
        return importlib.util.find_spec(package) is not None and _has_onnx()
    except (ImportError, ValueError):
        return False


def _has_onnx() -> bool:
    # torch.onnx.export writes the model through the onnx package
    return importlib.util.find_spec("onnx") is not None


def _quantized(module: torch.nn.Module) -> bool:
    """Whether bitsandbytes layers are in ``module`` (they exist only once it is imported)."""
    if "bitsandbytes" not in sys.modules:
        return False
    from minisam.quantization import is_quantized_layer

    return any(is_quantized_layer(layer) for layer in module.modules())


def part_precision(precision: str, runtime: str, part: str) -> str:
    """The precision ``part`` ("encoder" or "decoder") runs in under ``runtime`` for a checked
    ``--precision``: auto is the part's OpenVINO default; ONNX Runtime runs f32; bf16 only where the
    CPU has it (:func:`minisam.runtime.openvino_backend.native_precision`); int8 is the encoder's
    (:mod:`minisam.runtime.int8_encoder`), the decoder then runs its default."""
    if runtime != "openvino":
        return "f32"
    from minisam.runtime.openvino_backend import native_precision

    if precision == "int8" and part == "encoder":
        return "int8"
    if precision in ("auto", "int8"):
        precision = OPENVINO_DEFAULT_PRECISION[part]
    return native_precision(precision)


def resolve_runtime(
    runtime: str, device: str | torch.device, encoder: torch.nn.Module
) -> tuple[str, str | None]:
    """The runtime to run ``encoder`` with, and why torch runs when ``auto`` did not pick OpenVINO.

    Raises:
      PromptError / ModelError: one line, when a runtime asked for by name cannot run here (not
        installed, not a CPU device, a quantized encoder).
    """
    runtime = check_runtime(runtime)
    if runtime == "torch":
        return "torch", None
    device = torch.device(device)
    reason = None
    if device.type != "cpu":
        reason = f"it runs on the CPU, the device is {device}"
    elif _quantized(encoder):
        reason = "the encoder is quantized (--quant runs in torch)"
    if runtime == "auto":
        if reason is None and not _importable("openvino"):
            reason = "openvino is not installed"
        return ("torch", f"openvino not used: {reason}") if reason else ("openvino", None)
    if reason is not None:
        raise PromptError(
            f"--runtime {runtime} cannot run this encoder: {reason}; use --runtime torch"
        )
    if not _importable(runtime):
        raise ModelError(f"--runtime {runtime}: the package is not installed ({_INSTALL[runtime]})")
    return runtime, None


def encoder_runtime(
    runtime: str,
    sam: torch.nn.Module,
    input_size: int,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> TorchEncoder | CompiledEncoder:
    """The callable ``SamEngine`` runs the image encoder with: preprocessed (1, 3, S, S) → features.

    Arguments:
      runtime: "auto", "torch", "openvino" or "onnxruntime" (see the module docstring).
      sam: the model whose ``image_encoder`` is wrapped (in eval mode, on ``device``).
      input_size: the encoder's square input side (``SamConfig.image_size``).
      device: the engine's torch device; the exported runtimes need the CPU.
      precision: "auto" (OpenVINO: the encoder's :data:`OPENVINO_DEFAULT_PRECISION`; others f32), "f32",
        "bf16" or "int8" (OpenVINO only; int8 after ``minisam calibrate-int8``).

    Raises:
      PromptError / ModelError: one line, for a runtime or precision that cannot run here, or (a
        runtime asked for by name) an export that fails.
    """
    asked = check_runtime(runtime)
    precision = check_precision(precision, asked)
    chosen, reason = resolve_runtime(asked, device, sam.image_encoder)
    if chosen == "torch":
        if precision == "int8":
            raise PromptError(
                f"--precision int8 runs in OpenVINO, which is not used here ({reason})"
            )
        return TorchEncoder(sam.image_encoder, note=reason)
    precision = part_precision(precision, chosen, "encoder")
    # torch has no INT8 encoder: an INT8 export that will not load fails in one line, even under auto
    fallback = asked == "auto" and precision != "int8"
    encoder = CompiledEncoder(sam.image_encoder, chosen, input_size, precision, fallback=fallback)
    encoder.prepare()
    return encoder
