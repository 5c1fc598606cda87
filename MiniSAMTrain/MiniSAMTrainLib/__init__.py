"""MiniSAMTrain's library: the Qt-free training logic (``train_logic``) behind the module's panel.

It reads annotated slices from a volume and a segmentation (MRML, in the calling thread), trains a modality
adapter with the core trainer on a worker thread and installs it into the adapter library. Plain Python with
the ``slicer-core`` package imports it as well (the tests in ``Testing/slicer`` do).
"""

import sys
from pathlib import Path

# From a source checkout (module folders added in Slicer's settings) the core package ``minisam/`` and
# ``MiniSAMSegmentLib``, which this module uses, are not on sys.path; in a built extension they are
# installed next to this module and this is a no-op.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]
if (_SOURCE_ROOT / "minisam" / "__init__.py").is_file():
    for _path in (_SOURCE_ROOT, _SOURCE_ROOT / "MiniSAMSegment"):
        if str(_path) not in sys.path:
            sys.path.insert(0, str(_path))
