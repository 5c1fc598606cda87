"""Atomic output: write to a hidden temporary name next to the target, then rename over it.

A reader of the target path therefore sees either the old file (or folder) or the complete new one,
never a partial write, and a failed write leaves nothing behind. Files: :func:`atomic_output`,
several files as one: :func:`atomic_outputs`; folders: :func:`atomic_folder` (replaced whole) and
:func:`atomic_files_into` (new entries added to what is there); missing parent folders
that vanish again when the work fails: :func:`new_folders`. :func:`refuse_overwriting_inputs` keeps
an output from landing on one of the run's own input files.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from minisam.errors import OutputError

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


def _staging(target: Path) -> tuple[Path, Path | None]:
    """The path a writer must fill for ``target``, and the hidden folder holding it (detached headers)."""
    parent = target.parent
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    prefix = f".{stem}.tmp-"
    if suffix.lower() in _DETACHED_HEADER_SUFFIXES:
        tmp_dir = parent / f"{prefix}{secrets.token_hex(4)}"
        tmp_dir.mkdir()
        return tmp_dir / target.name, tmp_dir
    return _create_exclusive(parent, prefix, suffix), None


def _moves(target: Path, written: Path, tmp_dir: Path | None) -> list[tuple[Path, Path]]:
    """(source, destination) renames that put what was written for ``target`` in place, header last."""
    if tmp_dir is None:
        return [(written, target)]
    if not written.is_file():
        raise FileNotFoundError(f"writer produced no file {written}")
    data = [(p, target.parent / p.name) for p in sorted(tmp_dir.iterdir()) if p != written]
    return [*data, (written, target)]


def _commit(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename every source over its destination, all or none.

    Each existing destination is first renamed aside; if any rename fails, the renamed-in files are
    taken out again and the originals put back, so the folder looks as before.
    """
    aside: list[tuple[Path, Path]] = []  # (original, its hidden backup)
    done: list[Path] = []
    try:
        for _, destination in moves:
            if destination.exists() or destination.is_symlink():
                backup = _create_exclusive(destination.parent, f".{destination.name}.old-", "")
                os.replace(destination, backup)
                aside.append((destination, backup))
        for source, destination in moves:
            os.replace(source, destination)
            done.append(destination)
    except BaseException:
        for destination in done:
            _remove_quietly(destination)
        for original, backup in aside:
            os.replace(backup, original)
        raise
    for _, backup in aside:
        _remove_quietly(backup)


@contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Yield one temporary path per output; on success all replace their targets, else none does.

    Every temporary sits in its target's folder (same file system, so the renames are atomic) and
    keeps the target's suffix (``.name.tmp-1a2b3c4d.nii.gz``) so writers that pick a format by
    extension behave. If the block raises (a full disk on the second file, say), only the
    temporaries are removed: every existing target is left exactly as it was. Files only.

    For detached-header formats (``.mhd``, ``.nhdr``) the yielded path has the final file name
    inside a hidden temporary folder; its data files are moved out with the others, the header last.

    Arguments:
      paths: the final output files (distinct).

    Yields:
      the paths the caller must write, in the order of ``paths``.
    """
    targets = [Path(path) for path in paths]
    staged: list[tuple[Path, Path | None]] = []
    try:
        for target in targets:
            staged.append(_staging(target))
        yield [written for written, _ in staged]
        moves = [
            move
            for target, (written, tmp_dir) in zip(targets, staged, strict=True)
            for move in _moves(target, written, tmp_dir)
        ]
        _commit(moves)
    finally:
        for written, tmp_dir in staged:
            _remove_quietly(tmp_dir if tmp_dir is not None else written)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` atomically.

    :func:`atomic_outputs` for one file: if the block raises, the temporary output is removed and an
    existing target is left untouched.

    Arguments:
      path: the final output file.

    Yields:
      the path the caller must write.
    """
    with atomic_outputs([path]) as (tmp,):
        yield tmp


@contextmanager
def new_folders(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``folder`` and its missing parents; if the block raises, remove those left empty.

    A failed run (an unknown model, a bad manifest) therefore leaves no new empty folder behind, and
    never removes a folder that existed before or that received files.

    Raises:
      OSError: a folder cannot be created.
    """
    target = Path(folder)
    created: list[Path] = []
    missing = target
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    try:
        for path in reversed(created):
            path.mkdir()
        yield target
    except BaseException:
        for path in created:  # innermost first
            try:
                path.rmdir()
            except OSError:
                break  # not empty (or gone): keep it and everything above it
        raise


@contextmanager
def _sibling_folder(target: Path) -> Iterator[Path]:
    """An empty hidden folder beside ``target`` (missing parents created), removed when the block
    ends; parents created for it are removed again if the block raises."""
    with new_folders(target.parent):
        tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            _remove_quietly(tmp)


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on success it takes ``target``'s place.

    A folder cannot be replaced by one ``os.replace``, so an existing target is first renamed aside,
    the new folder renamed in, and the old one deleted: readers see the old or the new folder (or, for
    an instant, none), never a half-written one. If the block raises, nothing changes.
    """
    target = Path(target)
    with _sibling_folder(target) as tmp:
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


@contextmanager
def atomic_files_into(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on success its entries join ``target``.

    Unlike :func:`atomic_folder`, an existing ``target`` is kept with whatever else it holds (a
    report folder with the user's notes): the new entries are renamed in all or none (replacing
    those of the same names). A new ``target`` is the renamed temporary folder. If the block or a
    rename fails, ``target`` is as it was and parents created for it are removed.
    """
    target = Path(target)
    with _sibling_folder(target) as tmp:
        yield tmp
        if target.is_dir():
            _commit([(entry, target / entry.name) for entry in sorted(tmp.iterdir())])
        else:
            os.replace(tmp, target)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when ``a`` and ``b`` name one file or folder, after links, ``..``, relative parts and case.

    ``os.path.samefile`` compares device and inode, so it sees through hard and symbolic links and
    case-insensitive file systems; for a path that does not exist yet the resolved, case-folded
    (where the platform folds case) names are compared.
    """
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` lies somewhere under the existing folder ``folder`` (links resolved)."""
    if not folder.is_dir():
        return False
    return any(same_file(parent, folder) for parent in Path(os.path.realpath(path)).parents)


def refuse_overwriting_inputs(
    outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    inputs: Iterable[str | os.PathLike[str] | None],
) -> None:
    """Refuse any output that is one of the inputs, or a folder holding one (it would be replaced).

    Arguments:
      outputs: (option name such as ``--output``, the file or folder it writes); None paths are
        skipped.
      inputs: the files and folders the run reads; None entries are skipped.

    Raises:
      OutputError: one line naming the option, the output and the input it would destroy.
    """
    sources = [Path(path) for path in inputs if path is not None]
    for flag, output in outputs:
        if output is None:
            continue
        out = Path(output)
        for source in sources:
            if same_file(out, source):
                what = "folder" if source.is_dir() else "file"
                raise OutputError(
                    f"{flag} {out} is the input {what} {source}; choose another output path"
                )
            if _inside(source, out):
                raise OutputError(
                    f"{flag} {out} holds the input {source} and would replace it; "
                    "choose another output folder"
                )
