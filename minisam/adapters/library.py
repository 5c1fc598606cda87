"""Installed adapters, side by side under one folder, and the choice of adapter for an image's modality.

Two places hold adapters: the user library (``$MINISAM_ADAPTERS`` or ``~/.local/share/minisam/adapters``),
where ``install`` and ``remove`` work, and the read-only built-in adapters shipped inside the package
(``minisam/pretrained/adapters``). A user adapter shadows a built-in one of the same name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

from minisam.adapters.lora import check_adapter_name
from minisam.adapters.metadata import (
    WEIGHTS_FILE,
    adapter_folder_size,
    read_metadata,
    stored_parameters,
)
from minisam.adapters.validation import read_adapter
from minisam.atomic import atomic_folder, refuse_overwriting_inputs
from minisam.errors import ModelError, OutputError
from minisam.modality import family_for_dicom
from minisam.model_loader import PACKAGE_WEIGHTS

ENV_ROOT = "MINISAM_ADAPTERS"
# Adapters shipped inside the package (read-only; listed after the user's own).
BUILTIN_ROOT = PACKAGE_WEIGHTS / "adapters"


def default_root() -> Path:
    """``$MINISAM_ADAPTERS``, else ``~/.local/share/minisam/adapters``."""
    configured = os.environ.get(ENV_ROOT)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "minisam" / "adapters"


@dataclass(frozen=True)
class AdapterInfo:
    """One installed adapter, as listed."""

    name: str
    modality: str
    base_hash: str
    base_model: str
    method: str
    rank: int | None
    trainable_params: int
    size_bytes: int
    created: str
    path: Path
    builtin: bool = False  # shipped inside the package (cannot be removed, only shadowed)


class AdapterLibrary:
    """Adapters installed as ``<root>/<name>/`` folders (see :mod:`minisam.adapters.metadata`), plus
    the built-in adapters of ``builtin`` that no user adapter of the same name shadows.

    Arguments:
      root: the user library (default :func:`default_root`); ``install`` and ``remove`` work here.
      builtin: folder of read-only built-in adapters (default: the ones shipped in the package);
        None for none.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        builtin: str | os.PathLike[str] | None = BUILTIN_ROOT,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.builtin = Path(builtin).expanduser() if builtin is not None else None
        if self.builtin is not None and _same_folder(self.builtin, self.root):
            self.builtin = None  # the user library *is* the package folder: list it once

    def path(self, name: str) -> Path:
        """Folder of adapter ``name``: the user's, else the built-in one (ModelError if neither)."""
        return self._find(name)[0]

    def _find(self, name: str) -> tuple[Path, bool]:
        """``(folder, builtin)`` of adapter ``name``, the user library first."""
        folder = self.root / check_adapter_name(name)
        if folder.is_dir():
            return folder, False
        if self.builtin is not None and (self.builtin / name).is_dir():
            return self.builtin / name, True
        installed = (
            ", ".join(
                f"{info.name} (built-in)" if info.builtin else info.name for info in self.list()
            )
            or "none"
        )
        raise ModelError(
            f"adapter {name!r} is not installed in {self.root} (installed: {installed})"
        )

    def install(self, folder: str | os.PathLike[str], replace: bool = False) -> AdapterInfo:
        """Validate an adapter folder and copy it in as ``<root>/<name>/``, atomically.

        Arguments:
          folder: an adapter folder (from :func:`save_adapter`).
          replace: overwrite an installed adapter of the same name (else ModelError).
        """
        contents = read_adapter(folder)  # the whole folder must read back before it is installed
        name = check_adapter_name(contents.metadata.name)
        target = self.root / name
        if target.exists() and not replace:
            raise ModelError(
                f"adapter {name!r} is already installed in {self.root}; remove it or pass replace=True"
            )
        refuse_overwriting_inputs([(f"adapter {name!r} in the library,", target)], [folder])
        try:
            with atomic_folder(target) as tmp:
                for item in sorted(Path(folder).iterdir()):
                    if item.is_file() and not item.name.startswith("."):
                        shutil.copy2(item, tmp / item.name)
        except OSError as exc:
            raise OutputError(f"cannot install adapter {name!r} into {self.root} ({exc})") from None
        return self._info(target)

    def remove(self, name: str) -> None:
        """Uninstall adapter ``name``: rename it out of sight first, so no half-deleted folder is listed.

        Removing a user adapter that shadows a built-in one brings the built-in one back; a built-in
        adapter itself cannot be removed (ModelError).
        """
        folder, builtin = self._find(name)
        if builtin:
            raise ModelError(
                f"adapter {name!r} is built into the package ({folder}); it cannot be removed; "
                f"install your own adapter named {name!r} to shadow it"
            )
        trash = self.root / f".{name}.removed-{secrets.token_hex(4)}"
        try:
            os.replace(folder, trash)
        except OSError as exc:
            raise OutputError(f"cannot remove adapter {name!r} from {self.root} ({exc})") from None
        shutil.rmtree(trash, ignore_errors=True)

    def list(self) -> list[AdapterInfo]:
        """User adapters, then the built-in ones they do not shadow, each by name; unreadable folders
        are skipped with a warning."""
        found = self._scan(self.root, builtin=False)
        if self.builtin is not None:
            shadowed = {folder.name for folder in _adapter_folders(self.root)}
            found += [
                info for info in self._scan(self.builtin, builtin=True) if info.name not in shadowed
            ]
        return found

    def _scan(self, root: Path, builtin: bool) -> list[AdapterInfo]:
        found = []
        for folder in _adapter_folders(root):
            try:
                found.append(self._info(folder, builtin))
            except ModelError as exc:
                warnings.warn(f"skipping adapter folder {folder}: {exc}", stacklevel=3)
        return found

    def info(self, name: str) -> AdapterInfo:
        """Installed adapter ``name``: the user's, else the built-in one (ModelError if neither)."""
        return self._info(*self._find(name))

    def for_modality(self, modality: str | None, base_hash: str) -> AdapterInfo | None:
        """The installed adapter the automatic choice takes for an image of ``modality``.

        Arguments:
          modality: an adapter family ("XRAY") or a DICOM Modality code ("DX"); see
            ``minisam.modality.family_for_dicom``.
          base_hash: ``LoadedModel.base_hash()`` of the model in use; only adapters trained on it qualify.

        Returns:
          the adapter, or None for the base model (no adapter for this family and base). Among several
          candidates a user-installed adapter wins over a built-in one, then the most recently created.
          A choice by name or folder goes through ``minisam.adapters.choice.resolve_adapter``.
        """
        family = family_for_dicom(modality)
        if family is None:
            return None
        candidates = [a for a in self.list() if a.modality == family and a.base_hash == base_hash]
        if not candidates:
            return None
        return max(candidates, key=lambda a: (not a.builtin, a.created, a.name))

    def _info(self, folder: Path, builtin: bool = False) -> AdapterInfo:
        meta = read_metadata(folder)
        if meta.name != folder.name:
            raise ModelError(
                f"adapter folder {folder} holds adapter {meta.name!r}; its folder must be named so"
            )
        try:
            params = stored_parameters(folder / WEIGHTS_FILE)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"adapter {folder}: unreadable {WEIGHTS_FILE} ({exc})") from None
        spec = meta.spec or {}
        method = str(spec.get("method", "lora"))
        rank = spec.get("init_r") if method == "adalora" else spec.get("rank")
        return AdapterInfo(
            name=meta.name,
            modality=meta.modality,
            base_hash=meta.base_hash,
            base_model=meta.base_model,
            method=method,
            rank=int(rank) if isinstance(rank, int) else None,
            trainable_params=params,
            size_bytes=adapter_folder_size(folder),
            created=meta.created,
            path=folder,
            builtin=builtin,
        )


def _adapter_folders(root: Path) -> list[Path]:
    """Adapter folders under ``root`` by name; hidden ones are temporary folders of an install or
    removal in progress."""
    if not root.is_dir():
        return []
    return [f for f in sorted(root.iterdir()) if f.is_dir() and not f.name.startswith(".")]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
