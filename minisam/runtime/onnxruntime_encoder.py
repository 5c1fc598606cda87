"""The image encoder in ONNX Runtime on the CPU (f32): the cached ONNX export, one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minisam.runtime.onnx_export import INPUT_NAME, export_onnx

MODEL_FILE = "encoder.onnx"


def build(module: torch.nn.Module, input_size: int, folder: Path) -> None:
    """Write the ONNX export of ``module`` for a (1, 3, S, S) input into ``folder``."""
    export_onnx(module, input_size, folder / MODEL_FILE)


def load(folder: Path, precision: str, threads: int):
    """A function (1, 3, S, S) float32 array → features array, running the cached export."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    session = ort.InferenceSession(
        str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
    )

    def run(image: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: image})[0]

    return run
