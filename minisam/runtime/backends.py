"""Exported graphs loaded for a runtime: the one place that picks the backend and uses the export cache.

A backend module (:mod:`minisam.runtime.openvino_backend`, :mod:`minisam.runtime.onnxruntime_backend`)
has ``build(module, spec, folder)`` and ``load(folder, precision, threads) -> Runner``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from minisam.errors import ModelError
from minisam.runtime.adapter_state import export_hash
from minisam.runtime.export_cache import ExportKey, cached_export
from minisam.runtime.onnx_export import ExportSpec

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def backend(runtime: str):
    """The backend module of ``runtime`` (\"openvino\" or \"onnxruntime\")."""
    if runtime == "openvino":
        from minisam.runtime import openvino_backend

        return openvino_backend
    from minisam.runtime import onnxruntime_backend

    return onnxruntime_backend


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message (at most 200 characters), or its type's name."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def fallback_note(runtime: str, part: str, error: Exception, fallback: bool) -> str:
    """After ``error`` exporting or loading ``part`` ("the image encoder", "the mask decoder"): why
    torch runs instead (``--runtime auto``, ``fallback`` set), else a one-line ModelError."""
    reason = one_line(error)
    if not fallback:
        raise ModelError(
            f"--runtime {runtime}: {part} could not be exported or loaded ({reason})"
        ) from None
    return f"{runtime} failed: {reason}"


def cached_graph(
    runtime: str,
    module: torch.nn.Module,
    spec: ExportSpec,
    input_size: int,
    part: str,
    rebuild: bool = False,
) -> tuple[Path, bool]:
    """The folder of ``module``'s export (as it computes now) for ``runtime``, from the cache or built
    first; not loaded. Returns (folder, whether this call built it)."""
    chosen = backend(runtime)
    key = ExportKey(runtime, export_hash(module), input_size, part)
    return cached_export(key, lambda folder: chosen.build(module, spec, folder), rebuild=rebuild)


def load_export(
    runtime: str,
    module: torch.nn.Module,
    spec: ExportSpec,
    input_size: int,
    part: str,
    precision: str,
) -> tuple[Runner, Path, bool]:
    """``module`` (as it computes now) exported for ``runtime`` or found in the cache, and loaded.

    Returns:
      (the runner: input arrays in ``spec``'s order → output arrays, the export's folder, whether
      this call built it).
    """
    threads = torch.get_num_threads()
    folder, built = cached_graph(runtime, module, spec, input_size, part)
    try:
        run = backend(runtime).load(folder, precision, threads)
    except Exception:
        if built:
            raise
        # verified yet unloadable (a runtime of another version, say): build it again, once
        folder, built = cached_graph(runtime, module, spec, input_size, part, rebuild=True)
        run = backend(runtime).load(folder, precision, threads)
    return run, folder, built
