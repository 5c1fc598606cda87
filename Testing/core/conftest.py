"""Shared fixtures for the core tests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CXR = "cxr_lung_montgomery_shenzhen/images/MCUCXR_0001_0.png"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only evaluation data folder: $MINISAM_DATA, else <repo root>/../shared/data.

    Missing data is a failure, not a skip: a silently skipped I/O suite would hide regressions.
    """
    configured = os.environ.get("MINISAM_DATA")
    if configured:
        root = Path(configured).expanduser()
    else:
        root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    root = root.resolve()
    if not root.is_dir():
        source = "MINISAM_DATA" if configured else "the default <repo>/../shared/data"
        pytest.fail(
            f"test data folder {root} (from {source}) is missing; set MINISAM_DATA to the "
            "shared data folder",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def ct_adapter_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter library holding one CT adapter, ``ct_test``, for the default model.

    It is the built-in us_hc18 relabelled as CT: a real adapter of the default model, enough to
    see which family an automatic choice picks.
    """
    from minisam.adapters.library import BUILTIN_ROOT
    from minisam.adapters.metadata import METADATA_FILE

    root = tmp_path_factory.mktemp("ct_adapter_library")
    shutil.copytree(BUILTIN_ROOT / "us_hc18", root / "ct_test")
    meta = json.loads((root / "ct_test" / METADATA_FILE).read_text())
    meta.update(name="ct_test", modality="CT")
    (root / "ct_test" / METADATA_FILE).write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def runtime_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache folder per test module: each runtime exports a model once."""
    return tmp_path_factory.mktemp("minisam_cache")


@pytest.fixture
def runtime_cache(runtime_exports: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$MINISAM_CACHE`` pointed at the module's export cache folder."""
    monkeypatch.setenv("MINISAM_CACHE", str(runtime_exports))
    return runtime_exports


@pytest.fixture(scope="module")
def cxr_rgb(shared_data: Path) -> np.ndarray:
    """A real chest X-ray as an (H, W, 3) float32 image."""
    return np.asarray(Image.open(shared_data / CXR).convert("RGB"), dtype=np.float32)


@pytest.fixture
def count_exports(monkeypatch: pytest.MonkeyPatch):
    """``count_exports(backend, part)``: a list that grows by one for every export of ``part`` ("encoder"
    or "decoder") that the runtime backend module ``backend`` makes from then on."""

    def start(backend, part: str = "encoder") -> list[int]:
        calls: list[int] = []
        original = backend.export_onnx
        output = {"encoder": "features", "decoder": "masks"}[part]

        def export(module, spec, path):
            if output in spec.outputs:
                calls.append(1)
            return original(module, spec, path)

        monkeypatch.setattr(backend, "export_onnx", export)
        return calls

    return start


@pytest.fixture
def random_adapter():
    """``random_adapter(folder, spec, name)``: an adapter of the small test model saved in ``folder``,
    with random non-zero weights (peft starts LoRA's B at 0, which would change nothing)."""
    import torch
    from model_files import SMALL_MODEL

    from minisam.adapters import attach_adapter, save_adapter
    from minisam.adapters.lora import adapter_parameters
    from minisam.model_loader import load_model

    def make(folder: Path, spec, name: str) -> Path:
        loaded = load_model(SMALL_MODEL)
        base_hash = loaded.base_hash()
        peft_model = attach_adapter(loaded.sam, spec, name)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in adapter_parameters(peft_model, name).values():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        metadata = {"modality": "CT", "base_hash": base_hash, "base_model": SMALL_MODEL}
        return save_adapter(peft_model, name, folder, metadata)

    return make
