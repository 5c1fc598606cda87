"""Reading images and volumes, and writing masks with the exact geometry of their source.

Everything goes through SimpleITK so that a mask written for a volume lands on the same voxels
(size, origin, spacing, direction) in any viewer. Errors are :class:`InputError` /
:class:`OutputError` with one line naming the file; SimpleITK's multi-line RuntimeErrors never
reach the user as such, and what ITK prints itself is captured (:mod:`minisam.library_noise`).
Headers are checked before any pixel is read (:mod:`minisam.input_checks`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from minisam.atomic import atomic_outputs, full_suffix
from minisam.errors import InputError, OutputError
from minisam.input_checks import (
    check_dicom_series,
    check_finite,
    checked_header,
    has_dicom_magic,
    sitk_reason,
)
from minisam.library_noise import native_output_captured, native_output_shown

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "MedicalImage",
    "check_image_file",
    "check_output_path",
    "read_header",
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


@contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK's warnings off (unless --verbose) and its direct stderr output captured."""
    sitk.ProcessObject.SetGlobalWarningDisplay(native_output_shown())
    with native_output_captured():
        yield


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
            raise InputError(f"cannot reduce one-slice image {path}: {sitk_reason(exc)}") from exc
    return image


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
        raise InputError(f"cannot scan DICOM folder {folder}: {sitk_reason(exc)}") from exc
    if not series_ids:
        raise InputError(f"no DICOM series found in folder {folder}")
    # Several series in one folder (scout + axial, say): take the one with most files.
    every: list[str] = []
    best: list[str] = []
    for series_id in series_ids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))
        every += files
        if len(files) > len(best):
            best = files
    if not best:
        raise InputError(f"no readable DICOM files found in folder {folder}")
    check_dicom_series(folder, best, every)
    try:
        info = sitk.ImageFileReader()
        info.SetFileName(best[0])
        info.ReadImageInformation()
        modality = _modality_from(info)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(best)
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {sitk_reason(exc)}") from exc
    return image, modality


def _file_suffix(path: Path) -> str:
    """The lower-case suffix of a readable image file (InputError for missing, empty, unsupported)."""
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        raise InputError(f"input not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot access input {path}: {exc.strerror}") from exc
    if empty:
        raise InputError(f"input file is empty (0 bytes): {path}")
    suffix = full_suffix(path).lower()
    if suffix not in IMAGE_SUFFIXES and not has_dicom_magic(path):
        raise InputError(
            f"unsupported image file type '{suffix or '(none)'}' for {path}; "
            f"expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder"
        )
    return suffix


def check_image_file(path: str | os.PathLike[str]) -> None:
    """Every check :func:`read_image` makes before reading pixels, for readers of their own (Slicer).

    Header, dimensions, memory budget and payload completeness (and NaN/inf in a float NIfTI, which
    ITK would turn into zeros); see :mod:`minisam.input_checks`. The caller then applies
    :func:`~minisam.input_checks.check_finite` to the array it read.

    Raises:
      InputError: one line naming the file and what is wrong.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{path} is a folder; give an image or volume file")
    suffix = _file_suffix(path)
    try:
        with _quiet_itk():
            checked_header(path, suffix)
    except RuntimeError as exc:
        raise InputError(f"cannot read image {path}: {sitk_reason(exc)}") from exc


def _read_file(path: Path) -> tuple[sitk.Image, str | None]:
    suffix = _file_suffix(path)
    try:
        reader = checked_header(path, suffix)
    except RuntimeError as exc:
        if suffix in _PNG_LIKE:
            fallback = _read_with_pillow(path)
            if fallback is not None:
                return fallback, None
        raise InputError(f"cannot read image {path}: {sitk_reason(exc)}") from exc
    modality = _modality_from(reader)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read image {path}: {sitk_reason(exc)}") from exc
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
    check_finite(array, path)
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
      InputError: missing, empty, corrupt, truncated or unsupported file, zero-size, 4D+, over the
        memory budget, multi-component volume, complex pixels, NaN/inf intensities, folder without
        a DICOM series or with an unreadable, missing or misplaced slice (see
        :mod:`minisam.input_checks`).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path}")
    with _quiet_itk():
        if path.is_dir():
            image, modality = _read_dicom_folder(path)
        else:
            image, modality = _read_file(path)
    image = _squeeze_trailing(image, path)
    array = _to_array(image, path)
    return MedicalImage(array=array, image=image, path=path, modality=modality)


def read_header(path: str | os.PathLike[str]) -> sitk.ImageFileReader | None:
    """The header of a volume file (size, spacing, origin, direction), read without its voxels.

    Returns:
      a reader after ``ReadImageInformation``, or None for a DICOM folder, a 2D picture (PNG, JPEG,
      BMP, TIFF: their spacing is a print resolution, not anatomy) or an unreadable header (the full
      read then reports it).
    """
    path = Path(path).expanduser()
    if path.is_dir() or full_suffix(path).lower() in _PNG_LIKE:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


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


def _mask_image(mask: np.ndarray, reference: MedicalImage, out: Path) -> sitk.Image:
    """The mask as a SimpleITK image with the reference's geometry, checked for ``out``'s format."""
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
    return image


def _rgb_array(rgb: np.ndarray, out: Path) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise InputError(
            f"RGB image for {out} must be a non-empty (H, W, 3) uint8 array, "
            f"got {rgb.shape} {rgb.dtype}"
        )
    return np.ascontiguousarray(rgb)


def _save(data: sitk.Image | np.ndarray, tmp: Path, out: Path) -> None:
    """Encode a mask image (SimpleITK) or an RGB array (PNG, Pillow) into ``tmp`` for ``out``."""
    what = "mask" if isinstance(data, sitk.Image) else "PNG"
    try:
        if isinstance(data, sitk.Image):
            with _quiet_itk():
                sitk.WriteImage(data, str(tmp), True)
        else:
            from PIL import Image  # Pillow only needed here

            Image.fromarray(data).save(tmp, format="PNG")
    except RuntimeError as exc:
        raise OutputError(f"cannot write {what} {out}: {sitk_reason(exc)}") from exc
    except OSError as exc:
        raise OutputError(f"cannot write {what} {out}: {exc.strerror or exc}") from exc


def write_mask(
    mask: np.ndarray,
    reference: MedicalImage,
    path: str | os.PathLike[str],
    overlay: np.ndarray | None = None,
    overlay_path: str | os.PathLike[str] | None = None,
) -> None:
    """Write a label mask with exactly the geometry of ``reference`` (and an overlay), all or nothing.

    Both files are written to temporaries beside their targets and renamed into place only when both
    are complete (:func:`minisam.atomic.atomic_outputs`): a failure (a full disk on the overlay,
    say) leaves every pre-existing file exactly as it was and no temporary behind.

    Arguments:
      mask: bool or integer labels 0..255, shaped like ``reference.spatial_shape``.
      reference: the image the mask was computed on.
      path: output file; ``.png`` (2D only, written 0/255), ``.nii``, ``.nii.gz``, ``.nrrd``,
        ``.mha`` or ``.mhd`` (labels as given).
      overlay: optional (H, W, 3) uint8 picture written as PNG to ``overlay_path`` with the mask.
      overlay_path: where ``overlay`` goes (a ``.png`` other than ``path``).

    Raises:
      InputError: mask shape or values do not fit the reference; overlay not (H, W, 3) uint8.
      OutputError: a path cannot be written (nothing was changed then).
    """
    out = check_output_path(path, MASK_SUFFIXES)
    outputs: list[tuple[Path, sitk.Image | np.ndarray]] = [(out, _mask_image(mask, reference, out))]
    if overlay_path is not None:
        picture = check_output_path(overlay_path, (".png",))
        if overlay is None:
            raise InputError(f"no overlay picture given for {picture}")
        outputs.append((picture, _rgb_array(overlay, picture)))
    _write_together(outputs)


def write_rgb_png(rgb: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write an (H, W, 3) uint8 image (an overlay, say) as PNG, atomically.

    Raises:
      InputError: array is not (H, W, 3) uint8.
      OutputError: the path cannot be written.
    """
    out = check_output_path(path, (".png",))
    _write_together([(out, _rgb_array(rgb, out))])


def _write_together(outputs: list[tuple[Path, sitk.Image | np.ndarray]]) -> None:
    try:
        with atomic_outputs([out for out, _ in outputs]) as temporaries:
            for (out, data), tmp in zip(outputs, temporaries, strict=True):
                _save(data, tmp, out)
    except OSError as exc:  # creating a temporary or renaming
        names = ", ".join(str(out) for out, _ in outputs)
        raise OutputError(f"cannot write {names}: {exc.strerror or exc}") from exc
