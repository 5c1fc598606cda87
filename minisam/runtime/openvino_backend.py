"""A graph in OpenVINO on the CPU: ONNX export → OpenVINO IR (f32 weights) → compiled model.

The IR (``model.xml`` + ``model.bin``) is cached; the inference precision (``f32`` or ``bf16``) is
OpenVINO's ``INFERENCE_PRECISION_HINT``, applied when the IR is compiled, so one export serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from minisam.library_noise import native_output_captured
from minisam.runtime.onnx_export import ExportSpec, export_onnx

MODEL_FILE = "model.xml"
_PRECISION_HINTS = {"f32": "f32", "bf16": "bf16"}


def native_precision(precision: str) -> str:
    """``precision`` as this CPU runs it: bf16 needs OpenVINO's CPU plugin to have BF16 (native bf16
    instructions, e.g. AVX512_BF16 or AMX); elsewhere the hint is ignored and the model runs in f32."""
    if precision != "bf16":
        return precision
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in capabilities else "f32"


def build(module: torch.nn.Module, spec: ExportSpec, folder: Path) -> None:
    """Write the OpenVINO IR of ``module`` (interface ``spec``) into ``folder``."""
    import openvino as ov

    onnx_path = export_onnx(module, spec, folder / "model.onnx")
    with native_output_captured():
        model = ov.convert_model(str(onnx_path))
        # f32 weights: the precision is chosen at compile time (save_model would halve them by default)
        ov.save_model(model, str(folder / MODEL_FILE), compress_to_fp16=False)
    onnx_path.unlink()


def load(folder: Path, precision: str, threads: int):
    """A function (input arrays, in the spec's order) → output arrays, running the cached IR."""
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
    outputs = len(compiled.outputs)

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        # the inputs are read in place (no copy of the 4 MB embedding per click); they outlive the call
        request.infer(dict(enumerate(arrays)), share_inputs=True)
        return [request.get_output_tensor(i).data.copy() for i in range(outputs)]

    return run
