"""Exported graphs in the user cache: one folder per (part, runtime, weights, input size).

``<cache>/runtime_exports/<part>-<runtime>-<weights hash>-<size>px/`` (part ``encoder`` or ``decoder``)
holds the runtime's files and ``export.json``, which names the key and the SHA-256 of every file. A
folder is used only when its manifest matches the key and every file its digest; otherwise (stale,
truncated, edited, half deleted) it is built again and replaces the old one atomically
(:func:`minisam.atomic.atomic_folder`). The precision is not part of the key: OpenVINO applies it when
it compiles the f32 export, so f32 and bf16 share one folder; the calibrated INT8 encoder is another graph
and has its own part, ``encoder-int8`` (:mod:`minisam.runtime.int8_encoder`). ``<cache>`` is
:func:`minisam.weights.cache_dir` (``$MINISAM_CACHE``, else ``~/.cache/minisam``); when it cannot be
written the export is built in a temporary folder for this process only.

The folder is bounded: every use refreshes an export's ``export.json`` time, and each new export
removes the least recently used others until the folder holds at most ``$MINISAM_EXPORT_CACHE_MB``
(default :data:`DEFAULT_BUDGET_MB`). An export used in the last :data:`RECENTLY_USED_S` seconds stays
(another process may be loading it), staging leftovers of an interrupted export go after a day
(:data:`LEFTOVER_S`), and calibrated INT8 encoders (:data:`UNPRUNED_PARTS`) are never removed.
Without the bound every trained adapter would leave a decoder export (~20 MB) behind.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minisam.atomic import atomic_folder
from minisam.errors import InputError
from minisam.weights import cache_dir, sha256_of

FORMAT = "minisam.runtime-export/1"
MANIFEST = "export.json"
FOLDER = "runtime_exports"
LEGACY_FOLDERS = ("encoder_exports",)  # earlier versions' export folders, never read now
BUDGET_ENV = "MINISAM_EXPORT_CACHE_MB"
DEFAULT_BUDGET_MB = 1024
RECENTLY_USED_S = 600.0
LEFTOVER_S = 86400.0  # a hidden staging folder this old belongs to no export still being made
# Parts never pruned: a calibrated INT8 encoder needs the user's slices to be made again.
UNPRUNED_PARTS = ("encoder-int8",)


@dataclass(frozen=True)
class ExportKey:
    """What an export depends on: the runtime, what the module computes (:func:`export_hash`), the
    input side and which part of the model it is ("encoder" or "decoder")."""

    runtime: str
    module_hash: str
    input_size: int
    part: str = "encoder"

    @property
    def folder_name(self) -> str:
        return f"{self.part}-{self.runtime}-{self.module_hash}-{self.input_size}px"


def exports_dir() -> Path:
    """Folder of the cached exports (not created here)."""
    return cache_dir() / FOLDER


def is_valid(folder: Path, key: ExportKey) -> bool:
    """Whether ``folder`` holds a complete export for ``key``: manifest readable and matching, every
    file listed present with its SHA-256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != FORMAT or manifest.get("key") != asdict(key):
            return False
        if not isinstance(files, dict) or not files:
            return False
        return all(
            (folder / name).is_file() and sha256_of(folder / name) == digest
            for name, digest in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_manifest(folder: Path, key: ExportKey) -> None:
    files = {
        path.name: sha256_of(path) for path in sorted(folder.iterdir()) if path.name != MANIFEST
    }
    manifest = {"format": FORMAT, "key": asdict(key), "files": files, "torch": torch.__version__}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _private_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="minisam-export-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def cached_export(
    key: ExportKey, build: Callable[[Path], None], rebuild: bool = False
) -> tuple[Path, bool]:
    """The folder holding the verified export for ``key``, built first when missing or invalid.

    Arguments:
      key: what the export depends on.
      build: writes the runtime's files into the empty folder it is given.
      rebuild: build again even when the cached folder verifies.

    Returns:
      (folder, whether it was built by this call).
    """
    folder = exports_dir() / key.folder_name
    if not rebuild and is_valid(folder, key):
        mark_used(folder)
        return folder, False
    budget = budget_bytes()  # a bad setting is refused before anything is built
    try:
        with atomic_folder(folder) as staging:
            build(staging)
            _write_manifest(staging, key)
        prune_exports(keep=folder, budget=budget)
        return folder, True
    except PermissionError:
        # a read-only cache: build for this process only
        private = _private_folder()
        build(private)
        return private, True


def budget_bytes() -> int:
    """The export folder's size bound: ``$MINISAM_EXPORT_CACHE_MB`` megabytes, else the default.

    Raises:
      InputError: one line, when the variable is not a whole number of megabytes ≥ 0.
    """
    value = os.environ.get(BUDGET_ENV, "").strip()
    if not value:
        return DEFAULT_BUDGET_MB * 1024 * 1024
    try:
        megabytes = int(value)
    except ValueError:
        megabytes = -1
    if megabytes < 0:
        raise InputError(
            f"{BUDGET_ENV}={value!r}: expected a whole number of megabytes (0 or more)"
        )
    return megabytes * 1024 * 1024


def mark_used(folder: Path) -> None:
    """Record that ``folder``'s export was used now (what :func:`prune_exports` goes by)."""
    try:
        os.utime(folder / MANIFEST)
    except OSError:
        pass  # a read-only cache: its exports are used all the same


def _last_used(folder: Path) -> float:
    for path in (folder / MANIFEST, folder):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            continue
    return total


def prune_exports(keep: Path | None = None, budget: int | None = None) -> list[str]:
    """Remove the least recently used exports until the folder holds at most ``budget`` bytes
    (:func:`budget_bytes` when None); never ``keep`` nor an export used in the last
    :data:`RECENTLY_USED_S` seconds. Staging leftovers (hidden folders) and earlier versions' export
    folders go once :data:`LEFTOVER_S` old. Returns the names removed."""
    budget = budget_bytes() if budget is None else budget
    root = exports_dir()
    now = time.time()
    removed = []
    stale = [root.parent / name for name in LEGACY_FOLDERS]
    try:
        folders = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        folders = []
    stale += [p for p in folders if p.name.startswith(".")]
    for folder in stale:
        if folder.is_dir() and now - _last_used(folder) > LEFTOVER_S:
            shutil.rmtree(folder, ignore_errors=True)
            removed += [] if folder.exists() else [folder.name]
    kept_parts = tuple(f"{part}-" for part in UNPRUNED_PARTS)
    exports = [p for p in folders if not p.name.startswith((".", *kept_parts))]
    sizes = {p: _size(p) for p in exports}
    total = sum(sizes.values())
    for folder in sorted(exports, key=_last_used):
        if total <= budget:
            break
        if folder == keep or now - _last_used(folder) < RECENTLY_USED_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            total -= sizes[folder]
            removed.append(folder.name)
    return removed
