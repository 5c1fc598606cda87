"""Where the image encoder runs: torch (the reference), OpenVINO or ONNX Runtime.

``SamEngine`` calls ``engine.encoder(preprocessed)``; :func:`encoder_runtime` gives that callable for a
``--runtime`` choice. The prompt encoder and mask decoder always run in torch (they take milliseconds).
Exports of the encoder are built once per (encoder weights, input size, runtime) and cached
(:mod:`minisam.runtime.export_cache`).
"""

from __future__ import annotations

from minisam.runtime.choice import (
    PRECISIONS,
    RUNTIMES,
    check_precision,
    check_runtime,
    encoder_runtime,
    resolve_runtime,
)
from minisam.runtime.compiled import CompiledEncoder, TorchEncoder

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "CompiledEncoder",
    "TorchEncoder",
    "check_precision",
    "check_runtime",
    "encoder_runtime",
    "resolve_runtime",
]
