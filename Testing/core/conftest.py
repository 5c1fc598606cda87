"""Shared fixtures for the core tests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


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
