"""Fixtures for the Slicer-glue tests: plain pytest against the ``slicer-core`` package (no Slicer app).

MiniSAMSegment's Qt-free modules are imported from the source tree; the MRML scene and the module logics are
the real ones from slicer-core. Without slicer-core only ``test_slicer_core_present`` runs (and fails, saying
what to install) instead of every module failing at import.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from model_files import SMALL_MODEL
from slicer_cases import BATCH_SCRIPT, CT, LIVER, MODULE_DIR, REPO, SEG

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

if importlib.util.find_spec("slicer") is None:
    collect_ignore_glob = ["test_[!0]*.py"]


def _data_root() -> Path:
    configured = os.environ.get("MINISAM_DATA")
    root = Path(configured).expanduser() if configured else REPO / ".." / "shared" / "data"
    return root.resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """$MINISAM_DATA, else <repo>/../shared/data; missing data fails, never skips."""
    root = _data_root()
    if not root.is_dir():
        pytest.fail(f"test data folder {root} is missing; set MINISAM_DATA", pytrace=False)
    return root


@pytest.fixture()
def context():
    """A fresh MRML scene with the application, colour, volumes and segmentations logics registered."""
    from MiniSAMSegmentLib.mrml_context import mrml_context

    return mrml_context()


@pytest.fixture()
def ct_volume(context, shared_data: Path):
    return context.load_volume(shared_data / CT)


@pytest.fixture(scope="session")
def liver_labels(shared_data: Path):
    """(Z, Y, X) bool liver mask of the example CT (TotalSegmentator label 5)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / SEG))) == LIVER


@pytest.fixture(scope="session")
def segment_logic():
    """One MiniSAMSegmentLogic with the small test model, shared by the tests (loaded once)."""
    from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic

    return MiniSAMSegmentLogic(SMALL_MODEL, device="cpu")


@pytest.fixture()
def liver_editing(context, ct_volume, segment_logic):
    """The effect's click flow on the example CT: a logic observing the scene (the shared model, its own
    prompts), a segmentation with an empty "liver" segment, and Slicer's Segment Editor logic on it.
    Yields (logic, segmentation node, liver segment ID, LogicEditor); the logic is released after."""
    from editor_cases import LogicEditor
    from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic

    logic = MiniSAMSegmentLogic(SMALL_MODEL, device="cpu", loader=lambda spec: segment_logic.model)
    logic.observe_scene(context.scene)
    segmentation = context.new_segmentation(ct_volume)
    liver_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    yield (
        logic,
        segmentation,
        liver_id,
        LogicEditor(context.scene, segmentation, ct_volume, liver_id),
    )
    logic.release()


@pytest.fixture(scope="module")
def batch():
    """Scripts/batch_segment.py as a module (its ``run`` is the whole program except the process exit)."""
    spec = importlib.util.spec_from_file_location("batch_segment", BATCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
