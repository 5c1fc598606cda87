"""``minisam segment``: prompts on a 2D image or a volume slice → mask file (+ overlay PNG)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minisam.adapters.choice import apply_adapter
from minisam.atomic import full_suffix, refuse_overwriting_inputs, same_file
from minisam.errors import OutputError, PromptError
from minisam.modality import PRESET_CHOICES, adapter_family
from minisam.overlay import render_overlay
from minisam.prompts import LONE_CLICK_MODES, Prompt
from minisam.propagation import PropagationSettings
from minisam.runtime.choice import PRECISIONS, RUNTIMES, check_precision

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
    prompts.add_argument(
        "--prompts",
        metavar="JSON",
        help="prompts for one or more slices from a JSON file (see minisam/prompt_file.py)",
    )
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
        "--quant",
        default="fp32",
        help="quantize the image encoder: fp32 (default), nf4, int8, or a scheme such as "
        "'nf4:mlp+int8:attn' (bitsandbytes; see minisam/quantization/scheme.py)",
    )
    model.add_argument(
        "--adapter",
        default="none",
        help="modality adapter: an installed name, an adapter folder, 'auto' (from the adapter "
        "library, for the image's DICOM modality, else for the family of --modality: ct-lung is CT) "
        "or 'none' (default)",
    )
    model.add_argument(
        "--modality",
        default="auto",
        help=f"intensity normalisation preset: {', '.join(PRESET_CHOICES)} (default auto)",
    )
    model.add_argument(
        "--window", nargs=2, type=float, metavar=("LEVEL", "WIDTH"), help="CT window in HU"
    )
    model.add_argument(
        "--multimask",
        action="store_true",
        help="ask for 3 candidates and keep the best, for every prompt (a single click alone gets "
        "them anyway, then --lone-click applies; with --multimask it is not refined)",
    )
    model.add_argument(
        "--lone-click",
        default="refine",
        choices=LONE_CLICK_MODES,
        help="a single click alone: refine (default) answers it again with the box of SAM's best "
        "candidate, raw keeps that candidate as SAM gives it",
    )
    model.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    model.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="where the image encoder and mask decoder run: auto (default: OpenVINO on the CPU when "
        "installed, else torch), torch (the reference), openvino, onnxruntime; exports are cached in "
        "the cache folder",
    )
    model.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="the exported encoder's and decoder's inference precision: auto (default: encoder f32, "
        "OpenVINO's decoder bf16 on a CPU with bf16), f32 (torch's masks), bf16 (openvino only: both "
        "parts, faster, masks Dice ~0.99 against f32's; docs/bench/encoder_runtimes.md), int8 "
        "(openvino only: the encoder in INT8 once `minisam calibrate-int8` has made it, for a CPU "
        "without bf16)",
    )
    model.add_argument("--no-download", action="store_true", help="never download official weights")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--output",
        "--output_mask_path",
        dest="output",
        help="mask file (.png for 2D; .nii.gz/.nrrd/.mha); default <input stem>_mask.*",
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
    """The input's name without its file-type suffix (``ct.nii.gz`` → ``ct``; folders keep their name)."""
    suffix = "" if path.is_dir() else full_suffix(path)
    return path.name[: len(path.name) - len(suffix)]


def _check_number(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise PromptError(f"{name} {value} must be between {low} and {high}")


def run(args: argparse.Namespace) -> int:
    """Validate everything cheap first (arguments, input, outputs, prompts), then load, predict, write."""
    from minisam.imageio import read_image, write_mask
    from minisam.intensity import choose_preset, normalize_intensity
    from minisam.model_loader import load_model

    _check_number("--min-score", args.min_score, 0.0, 1.0)
    check_precision(args.precision, args.runtime)
    if args.max_slices is not None and args.max_slices < 1:
        raise PromptError(f"--max-slices {args.max_slices} must be at least 1")
    input_path = Path(args.input)
    image = read_image(input_path)
    mask_path, overlay_path = _output_paths(args, input_path, image.is_volume)
    axis, prompts = _prompts(args, image)

    preset = choose_preset(args.modality, image)
    window = tuple(args.window) if args.window else None
    normalized = normalize_intensity(image.array, preset, window=window)
    loaded = load_model(args.model, download=not args.no_download)
    if args.quant != "fp32":
        from minisam.quantization import quantize_model

        quantize_model(loaded, args.quant, device=args.device)
    adapter = apply_adapter(args.adapter, loaded, adapter_family(image.modality, preset))
    session = _session(loaded, normalized, image.is_rgb, args)
    settings = PropagationSettings(min_score=args.min_score, max_slices=args.max_slices)
    bar = None
    if args.propagate and not args.quiet:
        bar = tqdm(
            total=session.slice_count(axis), desc="propagating", unit="slice", file=sys.stderr
        )

    def progress(done: int, total: int) -> bool:
        if bar is not None:
            bar.update(done - bar.n)
        return True  # the CLI is cancelled with Ctrl-C

    try:
        result = session.segment(
            axis,
            prompts,
            propagate=args.propagate,
            settings=settings,
            multimask=True if args.multimask else None,  # else: three candidates for a lone click
            progress=progress,
        )
    finally:
        session.close()  # the background worker: nothing queued outlives the run (Ctrl-C included)
    if bar is not None:
        bar.close()
    first = min(prompts)
    overlay = None
    if overlay_path is not None:
        overlay = render_overlay(
            session.slice_image(axis, first), result.slices[first].mask, prompts[first]
        )
    labels = result.labels if image.is_volume else result.labels[0] * 255
    write_mask(labels, image, mask_path, overlay, overlay_path)  # both or neither
    if not args.quiet:
        encoder = session.engine.encoder.describe()
        _summary(
            loaded, args.quant, adapter, encoder, result, mask_path, overlay_path, image.is_volume
        )
    return 0


def _output_paths(
    args: argparse.Namespace, input_path: Path, is_volume: bool
) -> tuple[Path, Path | None]:
    from minisam.imageio import check_output_path

    suffixes = MASK_SUFFIXES_3D if is_volume else MASK_SUFFIXES_2D
    default_suffix = ".nii.gz" if is_volume else ".png"
    mask_path = Path(args.output or f"{_stem(input_path)}_mask{default_suffix}")
    check_output_path(mask_path, suffixes)
    overlay_path = Path(args.overlay) if args.overlay else None
    if overlay_path is None and args.save_overlay:
        overlay_path = Path(f"{_stem(input_path)}_overlay.png")
    if overlay_path is not None:
        check_output_path(overlay_path, (".png",))
        if same_file(overlay_path, mask_path):
            raise OutputError(f"--overlay {overlay_path} is the same file as the mask output")
    refuse_overwriting_inputs(
        [("--output", mask_path), ("--overlay", overlay_path)],
        [input_path, args.prompts, args.model, args.adapter],
    )
    return mask_path, overlay_path


def _prompts(args: argparse.Namespace, image) -> tuple[int, dict[int, Prompt]]:
    """The slicing axis and the validated prompts per slice, from the flags or ``--prompts``."""
    from minisam.geometry import slice_axis_for
    from minisam.prompt_file import read_prompt_file

    flag_prompt = Prompt.create(args.point, args.negative_point, args.box)
    if args.prompts and (not flag_prompt.is_empty or args.slice is not None):
        raise PromptError("--prompts replaces --box/--point/--slice: give one or the other")
    if args.prompts:
        prompts = read_prompt_file(args.prompts)
    elif flag_prompt.is_empty:
        raise PromptError("no prompt given: pass --box X0 Y0 X1 Y1 and/or --point X Y")
    elif image.is_volume and args.slice is None:
        raise PromptError(f"--slice is required for the volume {args.input}")
    else:
        prompts = {args.slice if args.slice is not None else 0: flag_prompt}

    if not image.is_volume:
        if set(prompts) != {0} or args.propagate:
            raise PromptError(f"--slice/--propagate apply to volumes; {args.input} is a 2D image")
        prompts[0].validate(image.array.shape[:2], where="the image")
        return 0, prompts
    try:
        axis = slice_axis_for(image, args.axis)
    except PromptError as error:
        raise PromptError(f"--axis {args.axis}: {error}") from None
    for index, prompt in prompts.items():
        shape = _slice_shape(image.array.shape, axis, index)
        prompt.validate(shape, where=f"slice {index} ({args.axis})")
    return axis, prompts


def _slice_shape(shape: tuple[int, ...], axis: int, index: int) -> tuple[int, int]:
    if not 0 <= index < shape[axis]:
        raise PromptError(
            f"--slice {index} is out of range: axis {axis} has slices 0..{shape[axis] - 1}"
        )
    rest = [n for a, n in enumerate(shape) if a != axis]
    return rest[0], rest[1]


def _session(loaded, normalized: np.ndarray, is_rgb: bool, args: argparse.Namespace):
    from minisam.engine import SamEngine
    from minisam.volume_session import VolumeSession

    device = args.device
    try:
        engine = SamEngine(
            loaded.sam, loaded.config, device, args.runtime, args.precision, args.lone_click
        )
    except (RuntimeError, AssertionError) as exc:
        raise PromptError(
            f"--device {device} is not usable here ({str(exc).splitlines()[0]})"
        ) from None
    # Propagation embeds its next slices on a worker thread ahead of the decoder (minisam.precompute):
    # 29 liver slices in 1.0-1.4 s instead of 10-15 s with the default model, LiteMedSAM 9 slices in
    # 14-16 s instead of 25-26 s (2-core CPU, OpenVINO encoder, one noisy run each).
    return VolumeSession(engine, normalized, is_rgb=is_rgb, background=args.propagate)


def _summary(
    loaded,
    args_quant: str,
    adapter: str | None,
    encoder: str,
    result,
    mask_path: Path,
    overlay_path: Path | None,
    is_volume: bool,
) -> None:
    quant = "" if args_quant == "fp32" else f" ({args_quant})"
    lines = [f"model: {loaded.name}{quant}" + (f" + adapter {adapter}" if adapter else "")]
    lines.append(f"image encoder: {encoder}")
    for index, item in sorted(result.slices.items()):
        if item.prompted:
            lines.append(
                f"prompted slice {index}: predicted IoU {item.score:.3f}, {int(item.mask.sum())} pixels"
            )
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
