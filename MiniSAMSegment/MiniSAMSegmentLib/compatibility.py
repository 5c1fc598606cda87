"""Which Slicer releases MiniSAM runs in. No Qt, no MRML, no ``minisam`` import (checked before those load).

MiniSAM's core package needs Python 3.10 or later; Slicer 5.8 and older ship Python 3.9, Slicer 5.10 and later
Python 3.12. The modules check this when Slicer loads them and say so in one line instead of failing on a
3.10-only construct somewhere inside; the extension's CMakeLists.txt refuses to build for an older Slicer.
"""

from __future__ import annotations

import sys

__all__ = ["MINIMUM_PYTHON", "MINIMUM_SLICER", "unsupported_python"]

MINIMUM_SLICER = "5.10"
MINIMUM_PYTHON = (3, 10)


def unsupported_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> str | None:
    """None when this Python runs MiniSAM, else the one-line reason (naming the Slicer release to use)."""
    if tuple(version[:2]) >= MINIMUM_PYTHON:
        return None
    found = ".".join(str(part) for part in version[:3])
    return (
        f"MiniSAM needs 3D Slicer {MINIMUM_SLICER} or later (Python "
        f"{'.'.join(map(str, MINIMUM_PYTHON))}+); this Slicer runs Python {found}"
    )
