"""OpenVINO INT8 image encoder: NNCF post-training quantization of the cached f32 export.

``--precision int8`` runs the image encoder quantized to INT8 (activations and weights of its matrix
multiplications and convolutions, NNCF's transformer preset) on the CPU; the mask decoder keeps its
``auto`` precision (it is exported per adapter state, and a click costs tens of milliseconds either
way). INT8 needs calibration slices of the kind the user segments, which the package does not ship, so
the quantized export is made once by ``minisam calibrate-int8 IMAGE...`` (:func:`calibrate_encoder`)
and cached beside the f32 export (:mod:`minisam.runtime.export_cache`, part ``encoder-int8``, with a
``calibration.json`` naming the slices). A run asking for int8 before that fails with one line.

Why it is a choice and not the default (docs/bench/encoder_runtimes.md): on a CPU with BF16 (this
project's machines) OpenVINO's bf16 is about as fast and 5-7x closer to f32's masks; on a CPU without
BF16 (most laptops) INT8 is the one way under f32's time (2.3x faster encoder, measured).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from minisam.errors import ModelError
from minisam.library_noise import native_output_captured, rich_progress_to_stderr
from minisam.runtime.adapter_state import export_hash
from minisam.runtime.backends import Runner, cached_graph
from minisam.runtime.export_cache import (
    ExportKey,
    cached_export,
    exports_dir,
    is_valid,
    mark_used,
)
from minisam.runtime.onnx_export import encoder_spec

PART = "encoder-int8"
CALIBRATION_FILE = "calibration.json"
_INSTALL = "pip install nncf"


def int8_key(module: torch.nn.Module, input_size: int) -> ExportKey:
    """The cache key of ``module``'s INT8 export (the f32 export's, another part)."""
    return ExportKey("openvino", export_hash(module), int(input_size), PART)


COMMAND = "minisam calibrate-int8 --model MODEL IMAGE..."  # what makes the INT8 encoder


def load_int8_encoder(
    module: torch.nn.Module, input_size: int, threads: int
) -> tuple[Runner, Path]:
    """The calibrated INT8 encoder of ``module`` from the cache, compiled for the CPU.

    Raises:
      ModelError: one line, when no valid INT8 export of these weights exists yet.
    """
    from minisam.runtime import openvino_backend

    key = int8_key(module, input_size)
    folder = exports_dir() / key.folder_name
    if not is_valid(folder, key):
        raise ModelError(
            "--precision int8: no INT8 encoder has been calibrated for this model's weights yet; "
            f"run `{COMMAND}` once on slices like yours"
        )
    mark_used(folder)
    # the layers NNCF kept in float run in f32
    return openvino_backend.load(folder, "f32", threads), folder


def calibrate_encoder(
    module: torch.nn.Module,
    input_size: int,
    inputs: Sequence[np.ndarray],
    names: Sequence[str],
    progress: Callable[[str], None] = lambda _: None,
    quiet: bool = False,
) -> Path:
    """Quantize ``module``'s OpenVINO export to INT8 on ``inputs`` and cache it (replacing any before).

    Arguments:
      module: the float32 image encoder (CPU, no encoder adapter active).
      input_size: its square input side.
      inputs: preprocessed (1, 3, S, S) float32 arrays (``SamEngine.model_input``), at least one.
      names: what each input is (file and slice), recorded in ``calibration.json``.
      progress: told what is being done.
      quiet: no NNCF progress bars (else they go to stderr).

    Returns:
      The INT8 export's folder.

    Raises:
      ModelError: one line, when NNCF is not installed or there is nothing to calibrate on.
    """
    try:
        import nncf
    except ImportError:
        raise ModelError(f"calibrate-int8 needs NNCF ({_INSTALL})") from None
    import openvino as ov

    from minisam.runtime.openvino_backend import MODEL_FILE

    if not inputs:
        raise ModelError("calibrate-int8: no slices to calibrate on")
    progress("exporting the f32 encoder (cached)")
    f32_folder, _ = cached_graph(
        "openvino", module, encoder_spec(input_size), input_size, "encoder"
    )

    def build(folder: Path) -> None:
        progress(f"quantizing on {len(inputs)} slices (NNCF)")
        with rich_progress_to_stderr(quiet), native_output_captured():
            model = ov.Core().read_model(str(f32_folder / MODEL_FILE))
            quantized = nncf.quantize(
                model,
                nncf.Dataset(list(inputs), lambda array: {0: array}),
                subset_size=len(inputs),
                model_type=nncf.ModelType.TRANSFORMER,
            )
            ov.save_model(quantized, str(folder / MODEL_FILE), compress_to_fp16=False)
        record = {"slices": len(inputs), "names": list(names), "nncf": nncf.__version__}
        (folder / CALIBRATION_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")

    folder, _ = cached_export(int8_key(module, input_size), build, rebuild=True)
    return folder
