"""torch → ONNX: the one export both OpenVINO and ONNX Runtime start from, for the encoder and the decoder."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minisam.library_noise import native_output_captured

OPSET = 17


@dataclass(frozen=True)
class ExportSpec:
    """A graph's interface: example inputs by name (in call order), output names, dynamic axes."""

    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


def encoder_spec(input_size: int) -> ExportSpec:
    """The image encoder: a (1, 3, S, S) image → features; S is fixed (``Sam.preprocess`` pads to it)."""
    return ExportSpec({"image": torch.zeros(1, 3, input_size, input_size)}, ("features",))


def export_onnx(module: torch.nn.Module, spec: ExportSpec, path: Path) -> Path:
    """Trace ``module`` (eval mode, CPU, float32) on ``spec``'s example inputs and write it as ONNX.

    torch's TorchScript-based exporter is used (``dynamo=False``): it needs only the ``onnx`` package,
    and tracing goes through peft's layers as they compute now (an encoder is exported with its
    adapters off; a decoder with its active adapter in the graph). Its tracer warnings (shape-dependent
    Python branches, fixed for the example's static sizes) are silenced.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with native_output_captured():
                torch.onnx.export(
                    module,
                    tuple(spec.inputs.values()),
                    str(path),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=list(spec.inputs),
                    output_names=list(spec.outputs),
                    dynamic_axes=spec.dynamic_axes or None,
                )
    finally:
        module.train(was_training)
    return path
