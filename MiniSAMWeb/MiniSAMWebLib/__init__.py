"""MiniSAM in the browser: a trame-slicer app on Slicer's Qt-free libraries (``minisam web``).

Glue only, as the Slicer modules are: trame-slicer serves the slice views and the segmentation editor, and
every MRML-level step (prompt book, slice geometry, prediction, writing into the segment) is
MiniSAMSegment's logic (``MiniSAMSegmentLib``), the same code the Slicer effect runs.
"""

import sys
from pathlib import Path

# MiniSAMSegmentLib lives in the MiniSAMSegment module folder of the source tree, beside this one.
_SEGMENT_MODULE = Path(__file__).resolve().parents[2] / "MiniSAMSegment"
if _SEGMENT_MODULE.is_dir() and str(_SEGMENT_MODULE) not in sys.path:
    sys.path.insert(0, str(_SEGMENT_MODULE))
