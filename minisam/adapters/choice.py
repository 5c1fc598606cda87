"""The one resolver of an adapter choice: "none" / "base", "auto", an installed name or a folder.

``minisam segment --adapter``, ``minisam evaluate``, MiniSAMSegment's logic and the batch script all
hand the user's choice to :func:`resolve_adapter` and load what it returns. Nothing is loaded here,
and "none" / "base" return before peft (the library) is imported, so they stay cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from minisam.errors import ModelError
from minisam.modality import AUTO

if TYPE_CHECKING:
    from minisam.adapters.library import AdapterLibrary
    from minisam.checkpoints import LoadedModel

__all__ = ["NO_ADAPTER", "AdapterChoice", "apply_adapter", "resolve_adapter"]

NO_ADAPTER = ("none", "base")
"""Choices meaning "the base model alone"."""

Family = str | None | Callable[[], "str | None"]


@dataclass(frozen=True)
class AdapterChoice:
    """The adapter a choice resolved to: its name (metadata), folder and creation time."""

    name: str
    folder: Path
    created: str = ""


def resolve_adapter(
    choice: str | None,
    base_hash: str,
    family: Family = None,
    library: AdapterLibrary | None = None,
) -> AdapterChoice | None:
    """The adapter ``choice`` names for an image, checked against the base model; changes nothing.

    Arguments:
      choice: "none" or "base" (the base model); "auto" or empty (the library's adapter for
        ``family`` trained on this base, None when there is none); an adapter folder; or the name of
        an installed adapter. Case and surrounding spaces do not matter for the keywords.
      base_hash: ``LoadedModel.base_hash()`` of the model the adapter will be loaded into.
      family: the image's adapter family (``minisam.modality.adapter_family``), or a function
        returning it (called only for "auto", where working it out may cost a pass over a volume).
      library: where "auto" and names look (default: the user's library plus the built-in adapters).

    Returns:
      the adapter to load, or None for the base model.

    Raises:
      ModelError: one line, for an unknown name, a missing folder, a folder that is not an adapter,
        or an adapter trained on another base model.
    """
    text = (choice or AUTO).strip()
    key = text.lower()
    if key in NO_ADAPTER:
        return None
    from minisam.adapters.library import AdapterLibrary
    from minisam.adapters.metadata import read_metadata

    library = library if library is not None else AdapterLibrary()
    if key == AUTO:
        wanted = family() if callable(family) else family
        info = library.for_modality(wanted, base_hash) if wanted else None
        return None if info is None else AdapterChoice(info.name, info.path, info.created)
    folder = Path(text).expanduser()
    if folder.is_dir():
        meta = read_metadata(folder)
        chosen, trained_on = AdapterChoice(meta.name, folder, meta.created), meta.base_hash
    elif os.sep in text or "/" in text:
        raise ModelError(f"adapter folder {text} does not exist")
    else:
        info = library.info(text)
        chosen, trained_on = AdapterChoice(info.name, info.path, info.created), info.base_hash
    if trained_on != base_hash:
        raise ModelError(
            f"adapter {chosen.name} ({chosen.folder}) was trained for base {trained_on}, "
            f"the loaded model is {base_hash}"
        )
    return chosen


def apply_adapter(
    choice: str | None,
    loaded: LoadedModel,
    family: Family = None,
    library: AdapterLibrary | None = None,
) -> str | None:
    """Resolve ``choice`` (see :func:`resolve_adapter`) and load that adapter into ``loaded``.

    For one image or one fixed configuration (``minisam segment``, ``minisam evaluate``); to switch
    between adapters per image use ``AdapterSwitcher.use`` with :func:`resolve_adapter`.

    Returns:
      the adapter's name, or None when the base model runs alone.
    """
    chosen = resolve_adapter(choice, loaded.base_hash(), family, library)
    if chosen is None:
        return None
    from minisam.adapters.injection import load_adapter

    load_adapter(loaded.sam, chosen.folder, loaded.base_hash())
    return chosen.name
