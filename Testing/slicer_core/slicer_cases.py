"""Paths and the reference case shared by the Slicer-glue tests (imported by conftest and the tests)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MiniSAMSegment"
BATCH_SCRIPT = MODULE_DIR / "Scripts" / "batch_segment.py"
CT = "totalsegmentator_example/example_ct_sm.nii.gz"  # 122 x 101 x 30 voxels, 3 mm, LPS diag(-1, -1, 1)
SEG = "totalsegmentator_example/example_seg.nii.gz"
LIVER = 5  # TotalSegmentator label
LIVER_SLICE = 24  # k
LIVER_BOX = (44, 27, 104, 81)  # i0, j0, i1, j1 on that slice
