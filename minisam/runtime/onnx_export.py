"""torch → ONNX for the image encoder: the one export both OpenVINO and ONNX Runtime start from."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from minisam.library_noise import native_output_captured

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "features"


def export_onnx(module: torch.nn.Module, input_size: int, path: Path) -> Path:
    """Trace ``module`` (eval mode, CPU, float32) on a (1, 3, S, S) input and write it as ONNX.

    The input size is fixed: ``Sam.preprocess`` pads every image to S × S. torch's TorchScript-based
    exporter is used (``dynamo=False``): it needs only the ``onnx`` package, and tracing goes through
    peft's layers with their adapters disabled exactly as the base encoder would. Its tracer warnings
    (shape-dependent Python branches, all fixed for one input size) are silenced.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = torch.zeros(1, 3, input_size, input_size)
            with native_output_captured():
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                )
    finally:
        module.train(was_training)
    return path
