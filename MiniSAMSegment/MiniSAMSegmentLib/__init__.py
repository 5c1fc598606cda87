"""MiniSAMSegment's library: the Segment Editor effect (Qt) and its Qt-free logic.

Slicer's effect loader imports this package by its folder name and looks up ``SegmentEditorEffect`` here,
so the effect is re-exported when Qt is present (inside the Slicer application). In plain Python with the
``slicer-core`` package there is no Qt: the package then only offers the Qt-free modules (``logic``,
``dependencies``, ...), which the batch script and the tests import.

On a Python older than MiniSAM needs (Slicer 5.8 and older) importing the package raises ImportError with
one line naming the Slicer release to use (see ``compatibility``).
"""

import sys
from pathlib import Path

# Loaded from a source checkout (the module folder added in Slicer's module paths), the core package
# ``minisam/`` sits in the repository root, which Slicer does not put on sys.path. Every MiniSAM
# module imports this package before ``minisam``. In a built extension ``minisam/`` is installed
# next to the modules (already importable) and this is a no-op.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]
if (_SOURCE_ROOT / "minisam" / "__init__.py").is_file() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.insert(0, str(_SOURCE_ROOT))

from .compatibility import unsupported_python  # noqa: E402 (imports nothing else)

# Slicer <= 5.8 (Python 3.9): one clear line instead of a failure deep inside the core package
if unsupported_python():
    raise ImportError(unsupported_python())

try:
    import qt  # noqa: F401  # only inside the Slicer application
except ImportError:
    qt = None

if qt is not None:
    from SegmentEditorEffects.AbstractScriptedSegmentEditorEffect import *  # noqa: F403

    from .SegmentEditorEffect import *  # noqa: F403
