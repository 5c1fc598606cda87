"""Reading images and volumes, and writing masks with the exact geometry of their source.

Everything goes through SimpleITK so that a mask written for a volume lands on the same voxels
(size, origin, spacing, direction) in any viewer. Errors are :class:`InputError` /
:class:`OutputError` with one line naming the file; SimpleITK's multi-line RuntimeErrors never
reach the user as such.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from minisam.atomic import atomic_output, full_suffix
from minisam.errors import InputError, OutputError

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "MedicalImage",
    "check_output_path",
    "read_image",
    "write_mask",
    "write_rgb_png",
]

_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
IMAGE_SUFFIXES: tuple[str, ...] = (
    *_2D_SUFFIXES,
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    *_DICOM_SUFFIXES,
)
"""Suffixes :func:`read_image` accepts (plus DICOM files of any name and DICOM series folders)."""

# JPEG is deliberately absent: lossy compression would turn a binary mask into a grey smear.
MASK_SUFFIXES: tuple[str, ...] = (".png", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
"""Suffixes :func:`write_mask` can write; ``.png`` only for 2D images."""

_PNG_LIKE = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DICOM_MODALITY_TAG = "0008|0060"
_COMPLEX_IDS = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


@dataclass
class MedicalImage:
    """An image or volume with the SimpleITK image that carries its geometry.

    Attributes:
      array: pixel data; 2D grey (H, W), 2D colour (H, W, 3) with alpha dropped, 3D (Z, Y, X).
      image: the SimpleITK image as read (for 2D colour the vector image, alpha included).
      path: the file or DICOM folder it came from.
      modality: DICOM modality (0008|0060, e.g. "CT", "MR", "US") when the file had one.
    """

    array: np.ndarray
    image: sitk.Image
    path: Path
    modality: str | None = None

    @property
    def is_volume(self) -> bool:
        """True for a 3D image."""
        return self.image.GetDimension() == 3

    @property
    def is_rgb(self) -> bool:
        """True for a 2D colour image (array (H, W, 3))."""
        return not self.is_volume and self.array.ndim == 3

    @property
    def spacing(self) -> tuple[float, ...]:
        """Pixel spacing in mm, x first (SimpleITK order)."""
        return tuple(self.image.GetSpacing())

    @property
    def origin(self) -> tuple[float, ...]:
        """Physical position (LPS mm) of the first pixel's centre, x first."""
        return tuple(self.image.GetOrigin())

    @property
    def direction(self) -> tuple[float, ...]:
        """Direction cosines, row-major flattened (SimpleITK order)."""
        return tuple(self.image.GetDirection())

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`array`."""
        return tuple(self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape a mask for this image must have: (H, W) or (Z, Y, X)."""
        return self.shape[:2] if self.is_rgb else self.shape


# --------------------------------------------------------------------------------------------
# reading


def _sitk_reason(exc: BaseException) -> str:
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


def _has_dicom_magic(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _modality_from(reader: sitk.ImageFileReader) -> str | None:
    if reader.HasMetaDataKey(_DICOM_MODALITY_TAG):
        value = reader.GetMetaData(_DICOM_MODALITY_TAG).strip()
        return value.upper() or None
    return None


def _squeeze_trailing(image: sitk.Image, path: Path) -> sitk.Image:
    """Drop singleton dimensions beyond the second (a one-slice volume becomes a 2D image)."""
    while image.GetDimension() > 2 and image.GetSize()[-1] == 1:
        size = list(image.GetSize())
        size[-1] = 0  # Extract's convention: size 0 collapses that dimension
        try:
            # GUESS keeps the in-plane 2x2 direction when it is valid and falls back to identity
            # for a slice whose plane is not spanned by the first two axes (rare oblique cases).
            image = sitk.Extract(
                image,
                size,
                [0] * image.GetDimension(),
                sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOGUESS,
            )
        except RuntimeError as exc:
            raise InputError(f"cannot reduce one-slice image {path}: {_sitk_reason(exc)}") from exc
    return image


def _nifti_non_finite_count(path: Path) -> int:
    """Count NaN/inf voxels in a float NIfTI file by reading its raw data.

    ITK's NIfTI reader silently replaces non-finite values with 0, so the array alone cannot
    reveal them. Returns 0 for non-float data or a header this check does not understand (the
    normal reader reports real corruption).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
            if len(header) < 348:
                return 0
            for order in ("<", ">"):
                size = struct.unpack(order + "i", header[:4])[0]
                if size in (348, 540):
                    break
            else:
                return 0
            if size == 348:
                dims = struct.unpack(order + "8h", header[40:56])
                datatype = struct.unpack(order + "h", header[70:72])[0]
                offset = int(struct.unpack(order + "f", header[108:112])[0])
            else:
                datatype = struct.unpack(order + "h", header[12:14])[0]
                dims = struct.unpack(order + "8q", header[16:80])
                offset = struct.unpack(order + "q", header[168:176])[0]
            dtype = {16: np.dtype(order + "f4"), 64: np.dtype(order + "f8")}.get(datatype)
            if dtype is None or not 1 <= dims[0] <= 7:
                return 0
            remaining = int(np.prod([max(int(d), 1) for d in dims[1 : dims[0] + 1]]))
            handle.seek(offset)  # forward seek; gzip streams support it
            bad = 0
            chunk = 1 << 22  # voxels per read: bounded memory for large volumes
            while remaining > 0:
                raw = handle.read(min(remaining, chunk) * dtype.itemsize)
                count = len(raw) // dtype.itemsize
                if count == 0:
                    break
                values = np.frombuffer(raw[: count * dtype.itemsize], dtype=dtype)
                bad += int(count - np.count_nonzero(np.isfinite(values)))
                remaining -= count
            return bad
    except (OSError, EOFError, struct.error, ValueError, zlib.error):
        return 0


def _read_with_pillow(path: Path) -> sitk.Image | None:
    """Read 2D raster modes ITK rejects (grey+alpha PNG, ...) with Pillow; None if unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            handle.load()
            mode = handle.mode
            if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F", "RGB"):
                picture = handle.copy()
            elif mode in ("1", "LA", "La"):
                picture = handle.convert("L")  # alpha dropped, bilevel widened
            else:  # P, PA, RGBA, CMYK, YCbCr, LAB, HSV ...
                picture = handle.convert("RGB")
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    array = np.asarray(picture)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=array.ndim == 3)


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, str | None]:
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputError(f"cannot scan DICOM folder {folder}: {_sitk_reason(exc)}") from exc
    if not series_ids:
        raise InputError(f"no DICOM series found in folder {folder}")
    # Several series in one folder (scout + axial, say): take the one with most files.
    best: list[str] = []
    for series_id in series_ids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))
        if len(files) > len(best):
            best = files
    if not best:
        raise InputError(f"no readable DICOM files found in folder {folder}")
    try:
        info = sitk.ImageFileReader()
        info.SetFileName(best[0])
        info.ReadImageInformation()
        modality = _modality_from(info)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(best)
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {_sitk_reason(exc)}") from exc
    return image, modality


def _read_file(path: Path) -> tuple[sitk.Image, str | None]:
    suffix = full_suffix(path).lower()
    if suffix not in IMAGE_SUFFIXES and not _has_dicom_magic(path):
        raise InputError(
            f"unsupported image file type '{suffix or '(none)'}' for {path}; "
            f"expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder"
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        if suffix in _PNG_LIKE:
            fallback = _read_with_pillow(path)
            if fallback is not None:
                return fallback, None
        raise InputError(f"cannot read image {path}: {_sitk_reason(exc)}") from exc
    # Reject from the header alone before allocating the pixels of a possibly huge 4D series.
    size = reader.GetSize()
    if any(s == 0 for s in size):
        raise InputError(f"image {path} has zero size {tuple(size)}")
    if len(size) > 3 and any(s != 1 for s in size[3:]):
        raise InputError(
            f"image {path} is {len(size)}D with size {tuple(size)}; only 2D images and 3D volumes "
            "are supported (extract one time point or channel first)"
        )
    modality = _modality_from(reader)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read image {path}: {_sitk_reason(exc)}") from exc
    if suffix in (".nii", ".nii.gz") and image.GetPixelID() in (
        sitk.sitkFloat32,
        sitk.sitkFloat64,
    ):
        bad = _nifti_non_finite_count(path)
        if bad:
            raise InputError(f"image {path} contains {bad} NaN or infinite intensities")
    return image, modality


def _to_array(image: sitk.Image, path: Path) -> np.ndarray:
    """Check pixel type and components, and return the array in MedicalImage's convention."""
    dim = image.GetDimension()
    if dim > 3:
        raise InputError(f"image {path} is {dim}D; only 2D images and 3D volumes are supported")
    if dim < 2:
        raise InputError(f"image {path} is {dim}D; only 2D images and 3D volumes are supported")
    if any(s == 0 for s in image.GetSize()):
        raise InputError(f"image {path} has zero size {image.GetSize()}")
    pixel_id = image.GetPixelID()
    if pixel_id in _COMPLEX_IDS:
        raise InputError(f"image {path} has complex-valued pixels; real intensities are needed")
    components = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayFromImage(image)
    integer = np.issubdtype(array.dtype, np.integer)
    if components > 1:
        # MetaImage stores complex data as 2 float channels, so name that likely cause.
        what = "complex or vector" if components == 2 and not integer else "vector"
        if dim == 3:
            raise InputError(
                f"volume {path} has {components} components per voxel ({what} data); "
                "only scalar volumes are supported"
            )
        if components == 2 and integer:
            array = array[..., 0]  # grey + alpha
        elif components in (3, 4):
            array = array[..., :3]  # RGB, alpha dropped
        else:
            raise InputError(
                f"image {path} has {components} components per pixel ({what} data); "
                "expected grey, grey+alpha, RGB or RGBA"
            )
        array = np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise InputError(f"image {path} contains {bad} NaN or infinite intensities")
    return array


def read_image(path: str | os.PathLike[str]) -> MedicalImage:
    """Read a 2D image, a volume file or a DICOM series folder.

    Arguments:
      path: PNG/JPEG/BMP/TIFF, NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd),
        a DICOM file (.dcm or any name with the DICM preamble) or a folder holding a DICOM series
        (the series with most files is read).

    Returns:
      the :class:`MedicalImage`; one-slice volumes come back as 2D images.

    Raises:
      InputError: missing, empty, corrupt or unsupported file, zero-size, 4D+, multi-component
        volume, complex pixels, NaN/inf intensities, folder without a DICOM series.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        image, modality = _read_dicom_folder(path)
    else:
        try:
            empty = path.stat().st_size == 0
        except OSError as exc:
            raise InputError(f"cannot access input {path}: {exc.strerror}") from exc
        if empty:
            raise InputError(f"input file is empty (0 bytes): {path}")
        image, modality = _read_file(path)
    image = _squeeze_trailing(image, path)
    array = _to_array(image, path)
    return MedicalImage(array=array, image=image, path=path, modality=modality)


# --------------------------------------------------------------------------------------------
# writing


def _match_suffix(path: Path, allowed: Iterable[str]) -> str | None:
    name = path.name.lower()
    # Longest first so ".nii.gz" wins over a hypothetical ".gz".
    for suffix in sorted((s.lower() for s in allowed), key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def check_output_path(
    path: str | os.PathLike[str], allowed_suffixes: Iterable[str] = MASK_SUFFIXES
) -> Path:
    """Validate an output path before any heavy work, so a long run never fails at the end.

    Arguments:
      path: the output file to be written (it may exist; it will be replaced).
      allowed_suffixes: accepted suffixes, with dot, e.g. ``(".png", ".nii.gz")``.

    Returns:
      the path as a :class:`Path` (user-expanded).

    Raises:
      OutputError: unsupported suffix, path is a folder, parent folder missing, not a folder or
        not writable.
    """
    allowed = tuple(allowed_suffixes)
    out = Path(path).expanduser()
    if _match_suffix(out, allowed) is None:
        raise OutputError(
            f"unsupported output file type for {out}; expected one of {', '.join(allowed)}"
        )
    if out.is_dir():
        raise OutputError(f"output path {out} is a directory; give a file name")
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"output folder {parent} does not exist (for {out})")
    if not parent.is_dir():
        raise OutputError(f"output parent {parent} is not a folder (for {out})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {parent} is not writable (for {out})")
    # os.access answers yes for root and ignores read-only mounts: prove it by creating a file.
    probe = parent / f".{out.name}.probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # someone else's probe of the same name: the folder is writable
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"output folder {parent} is not writable (for {out}): {reason}") from exc
    else:
        os.close(fd)
        try:
            probe.unlink()
        except OSError:
            pass
    return out


def _mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise InputError(f"mask has unsupported dtype {mask.dtype}; expected bool or integers")
    if mask.size and (
        not np.isfinite(mask).all()
        or mask.min() < 0
        or mask.max() > 255
        or (np.issubdtype(mask.dtype, np.floating) and not np.array_equal(mask, np.round(mask)))
    ):
        raise InputError("mask values must be whole numbers between 0 and 255 (uint8 labels)")
    return mask.astype(np.uint8)


def write_mask(mask: np.ndarray, reference: MedicalImage, path: str | os.PathLike[str]) -> None:
    """Write a label mask with exactly the geometry of ``reference``, atomically.

    Arguments:
      mask: bool or integer labels 0..255, shaped like ``reference.spatial_shape``.
      reference: the image the mask was computed on.
      path: output file; ``.png`` (2D only, written 0/255), ``.nii``, ``.nii.gz``, ``.nrrd``,
        ``.mha`` or ``.mhd`` (labels as given).

    Raises:
      InputError: mask shape or values do not fit the reference.
      OutputError: the path cannot be written.
    """
    out = check_output_path(path, MASK_SUFFIXES)
    suffix = _match_suffix(out, MASK_SUFFIXES)
    mask = np.asarray(mask)
    expected = reference.spatial_shape
    if mask.shape != expected:
        raise InputError(
            f"mask shape {mask.shape} does not match image shape {expected} of {reference.path}"
        )
    data = _mask_to_uint8(mask)
    if suffix in _PNG_LIKE:
        if data.ndim != 2:
            raise OutputError(
                f"cannot write a 3D mask to {out}; use .nii.gz, .nrrd or .mha for volumes"
            )
        data = np.where(data > 0, 255, 0).astype(np.uint8)

    image = sitk.GetImageFromArray(data, isVector=False)
    ref = reference.image
    if image.GetDimension() != ref.GetDimension():  # guarded by the shape check; be explicit
        raise InputError(f"mask dimension does not match image {reference.path}")
    # Copy geometry explicitly (CopyInformation refuses a scalar mask for a vector RGB reference).
    image.SetOrigin(ref.GetOrigin())
    image.SetSpacing(ref.GetSpacing())
    image.SetDirection(ref.GetDirection())
    try:
        with atomic_output(out) as tmp:
            sitk.WriteImage(image, str(tmp), True)
    except RuntimeError as exc:
        raise OutputError(f"cannot write mask {out}: {_sitk_reason(exc)}") from exc
    except OSError as exc:
        raise OutputError(f"cannot write mask {out}: {exc.strerror or exc}") from exc


def write_rgb_png(rgb: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write an (H, W, 3) uint8 image (an overlay, say) as PNG, atomically.

    Raises:
      InputError: array is not (H, W, 3) uint8.
      OutputError: the path cannot be written.
    """
    from PIL import Image  # Pillow only needed here

    out = check_output_path(path, (".png",))
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise InputError(
            f"RGB image for {out} must be a non-empty (H, W, 3) uint8 array, "
            f"got {rgb.shape} {rgb.dtype}"
        )
    try:
        with atomic_output(out) as tmp:
            Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
    except OSError as exc:
        raise OutputError(f"cannot write PNG {out}: {exc}") from exc
