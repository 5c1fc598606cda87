"""MiniSAMTrain's library: the Qt-free training logic (``train_logic``) behind the module's panel.

It reads annotated slices from a volume and a segmentation (MRML, in the calling thread), trains a modality
adapter in a separate ``minisam train-adapter`` process (``training_process``) and installs it into the adapter
library. Plain Python with the ``slicer-core`` package imports it as well (the tests in ``Testing/slicer_core`` do).
"""

import sys
from pathlib import Path

# From a source checkout (module folders added in Slicer's settings) MiniSAMSegmentLib, which this module
# uses, is not on sys.path; importing it puts the core package ``minisam/`` there too (see its
# ``__init__``). In a built extension both are installed next to this module and this is a no-op.
_SEGMENT_MODULE = Path(__file__).resolve().parents[2] / "MiniSAMSegment"
if (_SEGMENT_MODULE / "MiniSAMSegmentLib").is_dir() and str(_SEGMENT_MODULE) not in sys.path:
    sys.path.insert(0, str(_SEGMENT_MODULE))

import MiniSAMSegmentLib  # noqa: E402, F401 (sets up the path of the core package)
