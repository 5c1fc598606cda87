"""Where the image encoder and the mask decoder run: torch (the reference), OpenVINO or ONNX Runtime.

``SamEngine`` calls ``engine.encoder(preprocessed)``; :func:`encoder_runtime` gives that callable for a
``--runtime`` choice, and the mask decoder follows it (:mod:`minisam.runtime.decoder`); the prompt
encoder always runs in torch (microseconds). Exports are built once per (part, runtime, weights, input
size) and cached (:mod:`minisam.runtime.export_cache`).
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
