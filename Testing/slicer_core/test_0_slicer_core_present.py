"""The Slicer-glue suite needs the ``slicer-core`` package; say so in one clear failure if it is missing."""

from __future__ import annotations

import importlib.util


def test_slicer_core_present() -> None:
    assert importlib.util.find_spec("slicer") is not None, (
        "the Testing/slicer_core suite needs slicer-core: pip install 'slicer-core==5.11.*'"
    )
    import slicer

    assert hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "vtkSlicerSegmentationsModuleLogic")
