"""Shared fixtures for the core tests."""

from __future__ import annotations

import os
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
