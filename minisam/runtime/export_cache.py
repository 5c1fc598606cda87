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
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minisam.atomic import atomic_folder
from minisam.weights import cache_dir, sha256_of

FORMAT = "minisam.runtime-export/1"
MANIFEST = "export.json"
FOLDER = "runtime_exports"


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
        return folder, False
    try:
        with atomic_folder(folder) as staging:
            build(staging)
            _write_manifest(staging, key)
        return folder, True
    except PermissionError:
        # a read-only cache: build for this process only
        private = _private_folder()
        build(private)
        return private, True
