"""Deliberate import of segment-anything's model classes.

``import segment_anything`` runs the package ``__init__``, which imports the predictor and the automatic mask
generator and, through them, torchvision. MiniSAM needs only ``segment_anything.modeling`` (pure torch), and
no CPU torchvision build matches every CPU torch wheel. So:

* if torchvision imports, segment_anything is imported normally (users with CUDA torch keep everything);
* otherwise a bare package object is registered for ``segment_anything`` whose ``__path__`` points at the
  installed package, so its subpackages (``modeling``) import without running the package ``__init__``.
  ``segment_anything.SamPredictor`` is then unavailable, which MiniSAM never uses.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from minisam.errors import ModelError

_PACKAGE = "segment_anything"


def torchvision_available() -> bool:
    """True when torchvision imports cleanly next to the installed torch."""
    try:
        importlib.import_module("torchvision")
    except (
        Exception
    ):  # ImportError, or a broken build raising RuntimeError on operator registration
        return False
    return True


def _register_bare_package() -> None:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("segment-anything is not installed: run `pip install segment-anything`")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    package.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = package


def import_modeling() -> types.ModuleType:
    """Return ``segment_anything.modeling``, importing torchvision only when it is usable."""
    if _PACKAGE not in sys.modules:
        if torchvision_available():
            importlib.import_module(_PACKAGE)
        else:
            _register_bare_package()
    return importlib.import_module(f"{_PACKAGE}.modeling")


def full_package_loaded() -> bool:
    """True when segment_anything's own ``__init__`` ran (predictor and mask generator are importable)."""
    module = sys.modules.get(_PACKAGE)
    return module is not None and hasattr(module, "SamPredictor")
