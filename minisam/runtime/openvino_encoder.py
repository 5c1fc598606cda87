"""The image encoder in OpenVINO on the CPU: ONNX export → OpenVINO IR (f32 weights) → compiled model.

The IR (``encoder.xml`` + ``encoder.bin``) is cached; the inference precision (``f32`` or ``bf16``) is
OpenVINO's ``INFERENCE_PRECISION_HINT``, applied when the IR is compiled, so one export serves both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minisam.library_noise import native_output_captured
from minisam.runtime.onnx_export import export_onnx

MODEL_FILE = "encoder.xml"
_PRECISION_HINTS = {"f32": "f32", "bf16": "bf16"}


def build(module: torch.nn.Module, input_size: int, folder: Path) -> None:
    """Write the OpenVINO IR of ``module`` for a (1, 3, S, S) input into ``folder``."""
    import openvino as ov

    onnx_path = export_onnx(module, input_size, folder / "encoder.onnx")
    with native_output_captured():
        model = ov.convert_model(str(onnx_path))
        # f32 weights: the precision is chosen at compile time (save_model would halve them by default)
        ov.save_model(model, str(folder / MODEL_FILE), compress_to_fp16=False)
    onnx_path.unlink()


def load(folder: Path, precision: str, threads: int):
    """A function (1, 3, S, S) float32 array → features array, running the cached IR on the CPU."""
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": max(1, int(threads)),
    }
    with native_output_captured():
        compiled = core.compile_model(core.read_model(str(folder / MODEL_FILE)), "CPU", config)
    request = compiled.create_infer_request()

    def run(image: np.ndarray) -> np.ndarray:
        request.infer({0: image})
        return request.get_output_tensor(0).data.copy()

    return run
