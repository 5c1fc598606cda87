"""Model files the tests run on besides the shipped default (importable from every test folder).

``SMALL_MODEL`` is MiniSAM v3 (Testing/data/models/README.md): a real trained 2 M-parameter model that
encodes a slice in ~25 ms, for tests of mechanics (training loops, quantization, adapters, the Slicer
logic) that do not need the shipped default's quality and must not depend on which model it is.
"""

from __future__ import annotations

from pathlib import Path

MODELS = Path(__file__).resolve().parent / "data" / "models"
SMALL_MODEL = str(MODELS / "minisam_v3.safetensors")
