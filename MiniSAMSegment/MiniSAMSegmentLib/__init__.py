"""MiniSAMSegment's library: the Segment Editor effect (Qt) and its Qt-free logic.

Slicer's effect loader imports this package by its folder name and looks up ``SegmentEditorEffect`` here,
so the effect is re-exported when Qt is present (inside the Slicer application). In plain Python with the
``slicer-core`` package there is no Qt: the package then only offers the Qt-free modules (``logic``,
``dependencies``, ...), which the batch script and the tests import.
"""

try:
    import qt  # noqa: F401  # only inside the Slicer application
except ImportError:
    qt = None

if qt is not None:
    from SegmentEditorEffects.AbstractScriptedSegmentEditorEffect import *  # noqa: F403

    from .SegmentEditorEffect import *  # noqa: F403
