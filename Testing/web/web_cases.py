"""Paths, the reference CT and view geometry shared by the browser app's tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WEB_DIR = REPO / "MiniSAMWeb"
CT = "totalsegmentator_example/example_ct_sm.nii.gz"  # 122 x 101 x 30 voxels, 3 mm, LPS diag(-1, -1, 1)
SEG = "totalsegmentator_example/example_seg.nii.gz"
LIVER = 5  # TotalSegmentator labels
KIDNEY_LEFT = 3
AXIAL_SLICE = 12  # k of an axial slice through the liver and both kidneys


def ras_to_xy(xy_to_ras: Sequence[Sequence[float]], ras: Sequence[float]) -> tuple[float, float]:
    """Slice-view display position (pixels, origin bottom left) of a RAS point on the view's slice."""
    xyz = np.linalg.inv(np.asarray(xy_to_ras, dtype=float)) @ np.r_[np.asarray(ras, float), 1.0]
    return float(xyz[0]), float(xyz[1])


def ijk_to_ras(ijk_to_ras: np.ndarray, ijk: Sequence[float]) -> np.ndarray:
    return (np.asarray(ijk_to_ras, float) @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def label_center(labels: np.ndarray, label: int, k: int) -> tuple[float, float, float]:
    """(i, j, k) of the label's pixel nearest its centroid on axial slice k ((Z, Y, X) labels)."""
    j, i = np.nonzero(labels[k] == label)
    c = np.argmin((i - i.mean()) ** 2 + (j - j.mean()) ** 2)
    return float(i[c]), float(j[c]), float(k)


def label_box(labels: np.ndarray, label: int, k: int) -> tuple[int, int, int, int]:
    """(i0, j0, i1, j1) bounding the label on axial slice k."""
    j, i = np.nonzero(labels[k] == label)
    return int(i.min()), int(j.min()), int(i.max()), int(j.max())
