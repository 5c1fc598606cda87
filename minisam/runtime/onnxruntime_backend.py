"""A graph in ONNX Runtime on the CPU (f32): the cached ONNX export, one session."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from minisam.runtime.onnx_export import ExportSpec, export_onnx

MODEL_FILE = "model.onnx"


def build(module: torch.nn.Module, spec: ExportSpec, folder: Path) -> None:
    """Write the ONNX export of ``module`` (interface ``spec``) into ``folder``."""
    export_onnx(module, spec, folder / MODEL_FILE)


def load(folder: Path, precision: str, threads: int):
    """A function (input arrays, in the spec's order) → output arrays, running the cached export."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    session = ort.InferenceSession(
        str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
    )
    names = [graph_input.name for graph_input in session.get_inputs()]

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays, strict=True)))

    return run
