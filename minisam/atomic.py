"""Atomic output: write to a hidden temporary name next to the target, then rename over it.

A reader of the target path therefore sees either the old file (or folder) or the complete new one,
never a partial write, and a failed write leaves nothing behind. Files: :func:`atomic_output`;
folders: :func:`atomic_folder`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Formats whose header names a separate data file (MetaImage .mhd -> .raw/.zraw, NRRD .nhdr -> .raw
# and friends). The header stores the data file's *name*, so those are written under their final
# names inside a temporary folder and moved out afterwards instead of being renamed.
_DETACHED_HEADER_SUFFIXES = (".mhd", ".nhdr")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def full_suffix(path: str | os.PathLike[str]) -> str:
    """Return the file-type suffix, keeping a compression suffix with its base (``.nii.gz``).

    Arguments:
      path: any file path.

    Returns:
      the suffix including the dot, as written (case kept), or ``""`` when there is none.
    """
    suffixes = Path(path).suffixes
    if not suffixes:
        return ""
    if len(suffixes) >= 2 and suffixes[-1].lower() in _COMPRESSION_SUFFIXES:
        return "".join(suffixes[-2:])
    return suffixes[-1]


def _create_exclusive(parent: Path, prefix: str, suffix: str) -> Path:
    """Create an empty file with a random, unused name; mode 0o666 so the umask applies as usual."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a temporary file in {parent}")


def _remove_quietly(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` atomically.

    The temporary file sits in the target's folder (same file system, so ``os.replace`` is atomic)
    and keeps the target's suffix (``.name.tmp-1a2b3c4d.nii.gz``) so writers that pick a format by
    extension behave. If the block raises, the temporary output is removed and an existing target is
    left untouched. Files only, not folders.

    For detached-header formats (``.mhd``, ``.nhdr``) the yielded path has the final file name
    inside a hidden temporary folder; the data files are moved out first and the header last.

    Arguments:
      path: the final output file.

    Yields:
      the path the caller must write.
    """
    target = Path(path)
    parent = target.parent
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    prefix = f".{stem}.tmp-"

    if suffix.lower() in _DETACHED_HEADER_SUFFIXES:
        tmp_dir = parent / f"{prefix}{secrets.token_hex(4)}"
        tmp_dir.mkdir()
        try:
            yield tmp_dir / target.name
            header = tmp_dir / target.name
            if not header.is_file():
                raise FileNotFoundError(f"writer produced no file {header}")
            for produced in sorted(tmp_dir.iterdir()):
                if produced != header:
                    os.replace(produced, parent / produced.name)
            os.replace(header, target)
        finally:
            _remove_quietly(tmp_dir)
        return

    tmp = _create_exclusive(parent, prefix, suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on success it takes ``target``'s place.

    A folder cannot be replaced by one ``os.replace``, so an existing target is first renamed aside,
    the new folder renamed in, and the old one deleted: readers see the old or the new folder (or, for
    an instant, none), never a half-written one. If the block raises, nothing changes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            _remove_quietly(old)
        else:
            os.replace(tmp, target)
    finally:
        _remove_quietly(tmp)
