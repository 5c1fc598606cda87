"""``minisam segment``: prompts on a 2D image or a volume slice → mask file (+ overlay PNG)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minisam.errors import OutputError, PromptError
from minisam.prompts import Prompt
from minisam.propagation import PropagationSettings

MASK_SUFFIXES_2D = (".png", ".nii", ".nii.gz", ".nrrd", ".mha")
MASK_SUFFIXES_3D = (".nii", ".nii.gz", ".nrrd", ".mha")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "segment",
        help="segment an image or volume from point/box prompts",
        description="Segment a 2D image (PNG/JPEG) or a 3D volume (NIfTI/NRRD/MHA/DICOM folder) from a box "
        "and/or points. Coordinates are pixel indices (x = column, y = row) of the image or of the chosen "
        "slice: for axial slices x = i and y = j voxel indices, for coronal x = i, y = k, for sagittal "
        "x = j, y = k.",
    )
    parser.add_argument("input", help="image file, volume file or DICOM series folder")
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument(
        "--box",
        "--bbox",
        nargs=4,
        type=float,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box corners in pixel indices (inclusive)",
    )
    prompts.add_argument(
        "--point",
        nargs=2,
        type=float,
        action="append",
        metavar=("X", "Y"),
        default=[],
        help="positive click (repeatable)",
    )
    prompts.add_argument(
        "--negative-point",
        nargs=2,
        type=float,
        action="append",
        metavar=("X", "Y"),
        default=[],
        help="negative click (repeatable)",
    )
    volume = parser.add_argument_group("volumes")
    volume.add_argument(
        "--slice", type=int, help="index of the prompted slice (required for volumes)"
    )
    volume.add_argument(
        "--axis",
        default="axial",
        help="slicing direction: axial, coronal, sagittal, or an array axis 0/1/2 (default axial)",
    )
    volume.add_argument(
        "--propagate", action="store_true", help="propagate the mask to neighbouring slices"
    )
    volume.add_argument(
        "--min-score",
        type=float,
        default=PropagationSettings.min_score,
        help="stop propagating below this predicted IoU (default %(default)s)",
    )
    volume.add_argument(
        "--max-slices", type=int, help="propagate at most this many slices each way"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="default",
        help="'default' (embedded), an official name (sam_vit_b, ...), random:<arch>, or a path",
    )
    model.add_argument(
        "--modality",
        default="auto",
        help="intensity normalisation: auto, ct, ct-lung, ct-bone, ct-brain, ct-abdomen, mr, us, "
        "xray, rgb, raw (default auto)",
    )
    model.add_argument(
        "--window", nargs=2, type=float, metavar=("LEVEL", "WIDTH"), help="CT window in HU"
    )
    model.add_argument(
        "--multimask", action="store_true", help="ask for 3 candidates and keep the best"
    )
    model.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    model.add_argument("--no-download", action="store_true", help="never download official weights")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--output",
        "--output_mask_path",
        dest="output",
        help="mask file (.png for 2D; .nii.gz/.nrrd/.mha); default <input stem>_mask.*",
    )
    outputs.add_argument(
        "--save_mask", action="store_true", help="accepted for AdaLoRA-QAT familiarity"
    )
    outputs.add_argument("--overlay", help="overlay PNG of the prompted slice")
    outputs.add_argument(
        "--save_overlay",
        "--visualize",
        dest="save_overlay",
        action="store_true",
        help="write the overlay to <input stem>_overlay.png when --overlay is not given",
    )
    outputs.add_argument("--quiet", action="store_true", help="no progress or summary")
    parser.set_defaults(run=run)


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (
        ".nii.gz",
        ".nii",
        ".nrrd",
        ".nhdr",
        ".mha",
        ".mhd",
        ".png",
        ".jpg",
        ".jpeg",
        ".dcm",
    ):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_number(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise PromptError(f"{name} {value} must be between {low} and {high}")


def run(args: argparse.Namespace) -> int:
    from minisam.geometry import slice_axis_for
    from minisam.imageio import check_output_path, read_image, write_mask, write_rgb_png
    from minisam.intensity import guess_modality, normalize_intensity
    from minisam.model_loader import load_model
    from minisam.overlay import render_overlay

    input_path = Path(args.input)
    _check_number("--min-score", args.min_score, 0.0, 1.0)
    if args.max_slices is not None and args.max_slices < 1:
        raise PromptError(f"--max-slices {args.max_slices} must be at least 1")
    prompt = Prompt.create(args.point, args.negative_point, args.box)
    if prompt.is_empty:
        raise PromptError("no prompt given: pass --box X0 Y0 X1 Y1 and/or --point X Y")

    image = read_image(input_path)
    suffixes = MASK_SUFFIXES_3D if image.is_volume else MASK_SUFFIXES_2D
    default_suffix = ".nii.gz" if image.is_volume else ".png"
    mask_path = Path(args.output or f"{_stem(input_path)}_mask{default_suffix}")
    check_output_path(mask_path, suffixes)
    overlay_path = Path(args.overlay) if args.overlay else None
    if overlay_path is None and args.save_overlay:
        overlay_path = Path(f"{_stem(input_path)}_overlay.png")
    if overlay_path is not None:
        check_output_path(overlay_path, (".png",))
        if overlay_path.resolve() == mask_path.resolve():
            raise OutputError(f"--overlay {overlay_path} is the same file as the mask output")

    if image.is_volume:
        try:
            axis = slice_axis_for(image, args.axis)
        except PromptError as error:
            raise PromptError(f"--axis {args.axis}: {error}") from None
        if args.slice is None:
            raise PromptError(
                f"--slice is required for the volume {input_path} (axis {args.axis} has "
                f"{image.array.shape[axis]} slices)"
            )
        index = args.slice
    else:
        if args.slice not in (None, 0) or args.propagate:
            raise PromptError(f"--slice/--propagate apply to volumes; {input_path} is a 2D image")
        axis, index = 0, 0

    shape = (
        image.array.shape[:2]
        if not image.is_volume
        else _slice_shape(image.array.shape, axis, index)
    )
    prompt.validate(shape, where=_where(image.is_volume, index, args.axis))
    modality = guess_modality(image) if args.modality == "auto" else args.modality
    normalized = normalize_intensity(
        image.array, modality, window=tuple(args.window) if args.window else None
    )
    loaded = load_model(args.model, download=not args.no_download)
    session = _session(loaded, normalized, image.is_rgb, args.device)

    settings = PropagationSettings(min_score=args.min_score, max_slices=args.max_slices)
    progress_bar = (
        None
        if args.quiet or not args.propagate
        else tqdm(
            total=session.slice_count(axis), desc="propagating", unit="slice", file=sys.stderr
        )
    )

    def progress(done: int, total: int) -> bool:
        if progress_bar is not None:
            progress_bar.n = done
            progress_bar.refresh()
        return True

    result = session.segment(
        axis,
        {index: prompt},
        propagate=args.propagate,
        settings=settings,
        multimask=args.multimask,
        progress=progress,
    )
    if progress_bar is not None:
        progress_bar.close()
    labels = result.labels if image.is_volume else result.labels[0]

    written: list[Path] = []
    try:
        write_mask(labels if image.is_volume else labels * 255, image, mask_path)
        written.append(mask_path)
        if overlay_path is not None:
            write_rgb_png(
                render_overlay(session.slice_image(axis, index), result.slices[index].mask, prompt),
                overlay_path,
            )
            written.append(overlay_path)
    except BaseException:
        for path in written:  # all or nothing: no mask without its requested overlay
            path.unlink(missing_ok=True)
        raise
    if not args.quiet:
        _summary(loaded, result, index, mask_path, overlay_path, image.is_volume)
    return 0


def _slice_shape(shape: tuple[int, ...], axis: int, index: int) -> tuple[int, int]:
    if not 0 <= index < shape[axis]:
        raise PromptError(
            f"--slice {index} is out of range: axis {axis} has slices 0..{shape[axis] - 1}"
        )
    rest = [n for a, n in enumerate(shape) if a != axis]
    return rest[0], rest[1]


def _where(is_volume: bool, index: int, axis: str) -> str:
    return f"slice {index} ({axis})" if is_volume else "the image"


def _session(loaded, normalized: np.ndarray, is_rgb: bool, device: str):
    from minisam.engine import SamEngine
    from minisam.volume_session import VolumeSession

    try:
        engine = SamEngine(loaded.sam, loaded.config, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise PromptError(
            f"--device {device} is not usable here ({str(exc).splitlines()[0]})"
        ) from None
    return VolumeSession(engine, normalized, is_rgb=is_rgb)


def _summary(
    loaded, result, index: int, mask_path: Path, overlay_path: Path | None, is_volume: bool
) -> None:
    seed = result.slices[index]
    lines = [
        f"model: {loaded.name}",
        f"prompted slice {index}: predicted IoU {seed.score:.3f}, {int(seed.mask.sum())} pixels",
    ]
    if is_volume:
        filled = sorted(result.slices)
        lines.append(f"slices with mask: {len(filled)} ({filled[0]}..{filled[-1]})")
        lines.extend(f"  {reason}" for reason in result.stop_reasons)
    lines.append(f"mask written to {mask_path}")
    if overlay_path is not None:
        lines.append(f"overlay written to {overlay_path}")
    if not loaded.card.get("trained", True):
        lines.append("warning: this model is untrained; its masks are meaningless")
    print(os.linesep.join(lines))
