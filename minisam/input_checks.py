"""Inputs read completely or refused, from their headers, before any pixel buffer is allocated.

:func:`checked_header` reads an image file's header with SimpleITK (``ReadImageInformation``: size,
pixel type, no pixels) and refuses, with one line naming the file:

* a header whose voxel count times bytes per voxel is beyond :data:`MAX_INPUT_BYTES` (the memory
  budget of one input), or beyond what its compressed payload could possibly hold
  (:data:`DEFLATE_MAX_RATIO`);
* a payload shorter than the header says: raw data by the file size, gzip/zlib/bzip2 data by
  decompressing it as a stream and counting bytes, stopping once enough were seen (NIfTI, NRRD
  attached or detached, MetaImage ``.mha``/``.mhd``). ITK would fill a short NIfTI payload with zeros.

:func:`check_dicom_series` refuses a series folder with an unreadable (truncated) file, slices of
different sizes or types, or a missing or non-uniform slice gap. :func:`check_finite` is the one
NaN/inf rule for every reader (the CLI and the Slicer batch script).
"""

from __future__ import annotations

import bz2
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from minisam.errors import InputError

__all__ = [
    "DEFLATE_MAX_RATIO",
    "MAX_INPUT_BYTES",
    "SLICE_GAP_TOLERANCE",
    "check_dicom_series",
    "check_finite",
    "checked_header",
    "has_dicom_magic",
    "sitk_reason",
]

MAX_INPUT_BYTES = 4 * 1024**3
"""Memory budget of one input image: voxels x components x bytes per component, from its header
(4 GiB: a 1024 x 1024 x 1024 int32 CT fits, a header claiming 32767^3 voxels does not)."""
DEFLATE_MAX_RATIO = 1032
"""Deflate (gzip, zlib, PNG) cannot expand data more than 1032-fold, so a header asking for more
voxel bytes than that times the compressed file is refused without decompressing anything."""
SLICE_GAP_TOLERANCE = 0.01
"""A DICOM series' slice gaps must agree within 1 % of the median gap (else a slice is missing)."""

_CHUNK = 1 << 20  # bytes read (and, decompressed, produced) at a time: bounded memory
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
_META_SUFFIXES = (".mha", ".mhd")
_HEADER_LIMIT = 1 << 16  # text headers (NRRD, MetaImage) longer than this are not inspected


def sitk_reason(exc: BaseException) -> str:
    """The useful last line of a SimpleITK error (the rest is C++ file and line noise)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    reason = lines[-1]
    for marker in ("sitk::ERROR:", "ERROR:"):
        if marker in reason:
            reason = reason.split(marker, 1)[1].strip()
            break
    return reason


def check_finite(array: np.ndarray, where: str | os.PathLike[str]) -> None:
    """Refuse NaN or infinite intensities (the one rule of the CLI, evaluation and batch script).

    Raises:
      InputError: ``image <where> contains N NaN or infinite intensities``.
    """
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise InputError(f"image {where} contains {bad} NaN or infinite intensities")


def _bytes_per_pixel(reader: sitk.ImageFileReader) -> int:
    """Bytes of one pixel (all components) of the image the reader's header describes."""
    components = reader.GetNumberOfComponents()
    probe = sitk.Image([1, 1], reader.GetPixelID(), *([components] if components > 1 else []))
    return int(sitk.GetArrayViewFromImage(probe).nbytes)


def _gb(count: int) -> str:
    return f"{count / 1024**3:.1f} GiB" if count >= 1024**3 else f"{count / 1024**2:.1f} MiB"


@dataclass(frozen=True)
class _Payload:
    """Where a file's voxel bytes are: ``file`` from byte ``start``, encoded as ``encoding``.

    ``skip`` bytes of the (decompressed) stream come before the voxels (NIfTI's vox_offset inside a
    .nii.gz); ``dtype`` is set when the voxels must be scanned for NaN/inf (float NIfTI).
    """

    file: Path
    start: int
    encoding: str  # "raw", "deflate" (gzip or zlib) or "bzip2"
    skip: int = 0
    dtype: np.dtype | None = None


def _nifti_payload(path: Path) -> _Payload | None:
    """The payload of a NIfTI-1/2 file; dtype set for float data (ITK turns NaN/inf into 0)."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with open(path, "rb") as raw:
            head = _decompressed_head(raw, 540) if compressed else raw.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) < 348:
        return None
    for order in ("<", ">"):
        size = struct.unpack(order + "i", head[:4])[0]
        if size in (348, 540):
            break
    else:
        return None
    if size == 348:
        datatype = struct.unpack(order + "h", head[70:72])[0]
        offset = int(struct.unpack(order + "f", head[108:112])[0])
    else:
        datatype = struct.unpack(order + "h", head[12:14])[0]
        offset = struct.unpack(order + "q", head[168:176])[0]
    dtype = {16: np.dtype(order + "f4"), 64: np.dtype(order + "f8")}.get(datatype)
    if compressed:
        return _Payload(path, 0, "deflate", skip=max(offset, 0), dtype=dtype)
    return _Payload(path, max(offset, 0), "raw", dtype=dtype)


def _decompressed_head(handle, count: int) -> bytes:
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 32)
    out = b""
    while len(out) < count:
        chunk = handle.read(4096)
        if not chunk:
            break
        out += decompressor.decompress(chunk, count - len(out))
    return out


def _text_header(path: Path, end_of_header) -> tuple[list[tuple[str, str]], int] | None:
    """(key, value) pairs of a line-based header and the byte where it ends; None if unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_HEADER_LIMIT)
    except OSError:
        return None
    fields: list[tuple[str, str]] = []
    position = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        if newline < 0:
            return (fields, len(data)) if len(data) < _HEADER_LIMIT else None
        line = data[position:newline].decode("latin-1").strip()
        position = newline + 1
        done, pair = end_of_header(line)
        if pair is not None:
            fields.append(pair)
        if done:
            return fields, position
    return (fields, position) if len(data) < _HEADER_LIMIT else None


def _nrrd_payload(path: Path) -> _Payload | None:
    def end_of_header(line: str) -> tuple[bool, tuple[str, str] | None]:
        if not line:
            return True, None
        key, sep, value = line.partition(":")
        if not sep or line.startswith("#"):
            return False, None
        return False, (key.strip().lower(), value.lstrip("=").strip())

    parsed = _text_header(path, end_of_header)
    if parsed is None:
        return None
    fields, end = dict(parsed[0]), parsed[1]
    encoding = {"raw": "raw", "gzip": "deflate", "gz": "deflate", "bzip2": "bzip2", "bz2": "bzip2"}
    kind = encoding.get(fields.get("encoding", "").lower())
    data_file = fields.get("data file", fields.get("datafile"))
    if kind is None or fields.get("line skip", "0") != "0":
        return None
    skip = int(fields.get("byte skip", "0")) if fields.get("byte skip", "0").isdigit() else -1
    if skip < 0:
        return None  # "byte skip: -1": the data is at the end of the file, whatever precedes it
    if data_file is None:
        return (
            _Payload(path, end + skip, kind) if kind == "raw" else _Payload(path, end, kind, skip)
        )
    if " " in data_file or "%" in data_file or data_file.upper().startswith("LIST"):
        return None  # several data files: ITK checks those itself
    target = path.parent / data_file
    return _Payload(target, skip, kind) if kind == "raw" else _Payload(target, 0, kind, skip)


def _meta_payload(path: Path) -> _Payload | None:
    def end_of_header(line: str) -> tuple[bool, tuple[str, str] | None]:
        key, sep, value = line.partition("=")
        if not sep:
            return False, None
        pair = (key.strip().lower(), value.strip())
        return pair[0] == "elementdatafile", pair

    parsed = _text_header(path, end_of_header)
    if parsed is None or not parsed[0] or parsed[0][-1][0] != "elementdatafile":
        return None
    fields, end = dict(parsed[0]), parsed[1]
    kind = "deflate" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    header_size = fields.get("headersize", "0")
    data_file = fields["elementdatafile"]
    if not header_size.isdigit() or (data_file.upper() != "LOCAL" and " " in data_file):
        return None  # data at the end of the file, or a list of slice files
    if data_file.upper() == "LOCAL":
        return _Payload(path, end + int(header_size), kind)
    return _Payload(path.parent / data_file, int(header_size), kind)


def _payload(path: Path, suffix: str) -> _Payload | None:
    if suffix in _NIFTI_SUFFIXES:
        return _nifti_payload(path)
    if suffix in _NRRD_SUFFIXES:
        return _nrrd_payload(path)
    if suffix in _META_SUFFIXES:
        return _meta_payload(path)
    return None


def _decompressed(handle, encoding: str) -> Iterator[bytes]:
    """The decoded stream of ``handle`` in bounded pieces; ends early on corrupt or missing data."""
    if encoding == "raw":
        while chunk := handle.read(_CHUNK):
            yield chunk
        return
    make = (
        bz2.BZ2Decompressor
        if encoding == "bzip2"
        else (
            lambda: zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        )
    )
    decoder = make()
    pending = b""
    try:
        while True:
            if not pending:
                pending = handle.read(_CHUNK)
                if not pending:
                    return
            if encoding == "bzip2":
                produced = decoder.decompress(pending, _CHUNK)
                pending = b""
                while produced:
                    yield produced
                    if decoder.eof or decoder.needs_input:
                        break
                    produced = decoder.decompress(b"", _CHUNK)
                rest = decoder.unused_data if decoder.eof else b""
            else:
                produced = decoder.decompress(pending, _CHUNK)
                pending = decoder.unconsumed_tail
                if produced:
                    yield produced
                rest = decoder.unused_data if decoder.eof else b""
            if decoder.eof:  # a concatenated gzip member or bzip2 stream may follow
                pending = rest + pending
                if not pending.strip(b"\0"):
                    pending = handle.read(_CHUNK)
                    if not pending:
                        return
                decoder = make()
    except (OSError, EOFError, ValueError, zlib.error):
        return


def _scan(payload: _Payload, needed: int) -> tuple[int, int]:
    """(voxel bytes present, at most ``needed``; NaN/inf count among them when ``payload.dtype``)."""
    skip, got, bad = payload.skip, 0, 0
    itemsize = payload.dtype.itemsize if payload.dtype is not None else 1
    carry = b""
    with open(payload.file, "rb") as handle:
        handle.seek(payload.start)
        for piece in _decompressed(handle, payload.encoding):
            if skip:
                dropped = min(skip, len(piece))
                piece, skip = piece[dropped:], skip - dropped
            piece = piece[: needed - got]
            got += len(piece)
            if payload.dtype is not None and piece:
                data = carry + piece
                whole = len(data) // itemsize * itemsize
                values = np.frombuffer(data[:whole], dtype=payload.dtype)
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                carry = data[whole:]
            if got >= needed:
                break
    return got, bad


def _check_payload(path: Path, suffix: str, needed: int) -> None:
    """Refuse a payload shorter than ``needed`` bytes, or (float NIfTI) holding NaN/inf."""
    payload = _payload(path, suffix)
    if payload is None:
        return
    try:
        stored = payload.file.stat().st_size - payload.start
    except OSError as exc:
        raise InputError(
            f"image {path}: its data file {payload.file} cannot be read ({exc.strerror})"
        ) from None
    if payload.encoding == "deflate" and needed + payload.skip > DEFLATE_MAX_RATIO * max(stored, 1):
        raise InputError(
            f"image {path}: its header describes {_gb(needed)} of voxels, more than its "
            f"{stored} compressed bytes can hold (corrupt or forged header)"
        )
    if payload.encoding == "raw" and payload.dtype is None:
        got = max(stored, 0)
    else:
        try:
            got, bad = _scan(payload, needed)
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
        if bad and got >= needed:
            raise InputError(f"image {path} contains {bad} NaN or infinite intensities")
    if got < needed:
        where = "" if payload.file == path else f" (data file {payload.file})"
        raise InputError(
            f"image {path} is truncated{where}: its header describes {needed} bytes of voxels, "
            f"the file holds {got}"
        )


def checked_header(path: Path, suffix: str) -> sitk.ImageFileReader:
    """A reader whose header was read and checked; ``Execute()`` then reads the pixels.

    Arguments:
      path: an image file (not a DICOM folder).
      suffix: its lower-case full suffix (``.nii.gz``), which picks the payload layout.

    Raises:
      InputError: unreadable header, zero size, more than 3 non-trivial dimensions, over the memory
        budget, impossible compression ratio, a short payload, NaN/inf in a float NIfTI.
      RuntimeError: SimpleITK's own error for an unreadable header (the caller may try Pillow).
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    if any(s == 0 for s in size):
        raise InputError(f"image {path} has zero size {size}")
    if len(size) > 3 and any(s != 1 for s in size[3:]):
        raise InputError(
            f"image {path} is {len(size)}D with size {size}; only 2D images and 3D volumes "
            "are supported (extract one time point or channel first)"
        )
    needed = int(np.prod(size, dtype=np.float64)) * _bytes_per_pixel(reader)
    if needed > MAX_INPUT_BYTES:
        raise InputError(
            f"image {path} is too large: its header describes {'x'.join(map(str, size))} voxels "
            f"({_gb(needed)}), over the input budget of {_gb(MAX_INPUT_BYTES)}"
        )
    if suffix == ".png":
        stored = path.stat().st_size
        if needed > DEFLATE_MAX_RATIO * stored:
            raise InputError(
                f"image {path}: its header describes {_gb(needed)} of pixels, more than its "
                f"{stored} bytes can hold (corrupt or forged header)"
            )
    _check_payload(path, suffix, needed)
    return reader


def has_dicom_magic(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_candidate(path: Path) -> bool:
    if path.name.startswith(".") or not path.is_file():
        return False
    return path.suffix.lower() in (".dcm", ".dicom", ".ima") or has_dicom_magic(path)


def check_dicom_series(folder: Path, series: Sequence[str], every_series: Sequence[str]) -> None:
    """Refuse a DICOM folder whose chosen ``series`` is incomplete or irregular.

    Arguments:
      folder: the DICOM folder.
      series: the files of the series that will be read, in slice order (GDCM's).
      every_series: the files of all series GDCM found in the folder.

    Raises:
      InputError: a DICOM file GDCM could not place in any series (truncated or corrupt), slices of
        different sizes or pixel types, a series larger than :data:`MAX_INPUT_BYTES`, duplicate
        positions or slice gaps that differ by more than :data:`SLICE_GAP_TOLERANCE`.
    """
    known = {os.path.normcase(os.path.abspath(name)) for name in every_series}
    for candidate in sorted(folder.iterdir()):
        if (
            _is_dicom_candidate(candidate)
            and os.path.normcase(os.path.abspath(candidate)) not in known
        ):
            raise InputError(
                f"DICOM file {candidate} in folder {folder} cannot be read (truncated or corrupt); "
                "remove it or restore the series"
            )
    shapes, positions, normal = set(), [], None
    for name in series:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"DICOM file {name} cannot be read: {sitk_reason(exc)}") from None
        shapes.add(
            (tuple(reader.GetSize())[:2], reader.GetPixelID(), reader.GetNumberOfComponents())
        )
        if len(shapes) > 1:
            raise InputError(
                f"DICOM series in {folder} has slices of different sizes or pixel types ({name})"
            )
        if normal is None:
            direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
            normal = direction[:, 2]
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    ((plane, _, _),) = shapes
    bytes_per_pixel = _bytes_per_pixel(reader)
    needed = plane[0] * plane[1] * len(series) * bytes_per_pixel
    if needed > MAX_INPUT_BYTES:
        raise InputError(
            f"DICOM series in {folder} is too large ({_gb(needed)}), over the input budget of "
            f"{_gb(MAX_INPUT_BYTES)}"
        )
    if len(positions) < 3:
        return
    gaps = np.abs(np.diff(np.sort(positions)))
    typical = float(np.median(gaps))
    if typical <= 0 or np.any(gaps <= 0):
        raise InputError(f"DICOM series in {folder} has two slices at the same position")
    worst = float(np.max(np.abs(gaps - typical)))
    if worst > SLICE_GAP_TOLERANCE * typical:
        raise InputError(
            f"DICOM series in {folder} has a missing slice or uneven slice gaps ("
            f"{float(gaps.min()):.3g}..{float(gaps.max()):.3g} mm, typically {typical:.3g} mm)"
        )
