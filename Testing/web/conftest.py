"""Fixtures for the browser app's tests: trame-slicer's views rendered offscreen, MiniSAM's shared logic.

The in-process tests build the app's session (``MiniSAMWebLib.controller.WebSegmentation``) on a trame-slicer
``SlicerApp`` whose slice views render offscreen (EGL) without a server, and inject VTK interactor events
into them as the browser's mouse would. The end-to-end tests start ``minisam web`` and drive Debian's
chromium with Playwright.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from web_cases import CT, REPO, SEG, WEB_DIR

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no display, no OSMesa


if importlib.util.find_spec("trame_slicer") is None or importlib.util.find_spec("slicer") is None:
    # only test_0_web_packages_present runs, and fails saying what to install
    collect_ignore_glob = ["test_web_*.py"]
if str(WEB_DIR) not in sys.path:
    sys.path.insert(0, str(WEB_DIR))
import MiniSAMWebLib  # noqa: E402, F401  (puts MiniSAMSegmentLib on the path, as minisam web does)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """$MINISAM_DATA, else <repo>/../shared/data; missing data fails, never skips."""
    configured = os.environ.get("MINISAM_DATA")
    root = (
        Path(configured).expanduser() if configured else REPO / ".." / "shared" / "data"
    ).resolve()
    if not root.is_dir():
        pytest.fail(f"test data folder {root} is missing; set MINISAM_DATA", pytrace=False)
    return root


@pytest.fixture(scope="session")
def ct_path(shared_data: Path) -> Path:
    return shared_data / CT


@pytest.fixture(scope="session")
def reference_labels(shared_data: Path):
    """(Z, Y, X) TotalSegmentator labels of the example CT."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / SEG)))
