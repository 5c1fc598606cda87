"""Headless MiniSAM: a volume and a prompts JSON in, a ``.seg.nrrd`` out.

Inside Slicer (arguments after ``--`` reach the script)::

    Slicer --no-main-window --python-script batch_segment.py -- \\
        --input ct.nii.gz --prompts prompts.json --output liver.seg.nrrd [--model default] [--propagate] \\
        [--adapter auto] [--runtime auto] [--precision auto] [--install-dependencies]

or in plain Python with the ``slicer-core`` package::

    python MiniSAMSegment/Scripts/batch_segment.py --input ct.nii.gz --prompts prompts.json --output x.seg.nrrd

Prompts: see ``minisam/prompt_file.py`` (slice index and pixel coordinates of that slice). ``--adapter`` means
what it means for ``minisam segment`` and applies to the whole run (the prompts file, shared with
``minisam segment --prompts``, holds per-slice prompts only). Exit codes: 0 done,
2 bad input (one line on stderr, no output file).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

_MODULE_DIR = Path(__file__).resolve().parents[1]  # holds MiniSAMSegmentLib
_SOURCE_ROOT = _MODULE_DIR.parent  # a source checkout holds minisam/ here
for _path in (_MODULE_DIR, _SOURCE_ROOT):
    if (_path / "MiniSAMSegmentLib").is_dir() or (_path / "minisam" / "__init__.py").is_file():
        if str(_path) not in sys.path:
            sys.path.insert(0, str(_path))

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
PROG = "batch_segment"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see --help)")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input",
        required=True,
        help="volume file (NIfTI, NRRD, MHA) or DICOM series folder, read as by minisam segment",
    )
    parser.add_argument(
        "--prompts", required=True, help="prompts JSON (see minisam/prompt_file.py)"
    )
    parser.add_argument("--output", required=True, help="segmentation file to write (.seg.nrrd)")
    parser.add_argument("--model", default="default", help="model name or checkpoint path")
    parser.add_argument(
        "--axis", default="axial", help="axial, coronal, sagittal or an array axis 0/1/2"
    )
    parser.add_argument("--propagate", action="store_true", help="propagate to neighbouring slices")
    parser.add_argument("--min-score", type=float, default=0.5, help="propagation stop score")
    parser.add_argument(
        "--max-slices", type=int, help="propagate at most this many slices each way"
    )
    parser.add_argument(
        "--modality", default="auto", help="intensity normalisation (auto, ct, mr, ...)"
    )
    parser.add_argument(
        "--adapter",
        default="none",
        help="modality adapter, as for 'minisam segment': an installed name, an adapter folder, 'auto' "
        "(by the volume's DICOM modality, else its --modality) or 'none' (default)",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda")
    parser.add_argument(
        "--runtime",
        default="auto",
        help="where the image encoder and mask decoder run, as for 'minisam segment': auto (default: OpenVINO on the "
        "CPU when installed, else torch), torch, openvino, onnxruntime",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="the runtime's arithmetic, as for 'minisam segment': auto (default), f32, bf16, int8 "
        "(openvino only; int8 after 'minisam calibrate-int8')",
    )
    parser.add_argument("--segment-name", default="MiniSAM", help="name of the written segment")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show what VTK/ITK print themselves (hidden by default)",
    )
    parser.add_argument(
        "--install-dependencies",
        action="store_true",
        help="install missing Python packages (torch via the PyTorch extension) without asking",
    )
    return parser


def run(argv: Sequence[str]) -> int:
    """Parse, segment, write; MiniSAMError and usage errors become one stderr line and exit code 2."""
    from minisam.errors import MiniSAMError, PromptError

    try:
        args = build_parser().parse_args(list(argv))
        from minisam.library_noise import show_native_output

        show_native_output(args.verbose)
        if not 0.0 <= args.min_score <= 1.0:
            raise PromptError(f"--min-score {args.min_score} must be between 0 and 1")
        if args.max_slices is not None and args.max_slices < 1:
            raise PromptError(f"--max-slices {args.max_slices} must be at least 1")
        _check_dependencies(args.install_dependencies)
        from minisam.runtime import check_precision, check_runtime

        args.runtime = check_runtime(args.runtime)
        args.precision = check_precision(args.precision, args.runtime)
        _segment(args)
    except (MiniSAMError, _UsageError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _check_dependencies(install: bool) -> None:
    """Install missing packages when asked to on the command line (that is the confirmation), else fail."""
    from MiniSAMSegmentLib import dependencies

    if install:
        dependencies.ensure_dependencies(confirm=lambda text: True)
        return
    torch_missing, missing = dependencies.missing_requirements()
    if torch_missing or missing:
        names = (["torch"] if torch_missing else []) + missing
        raise dependencies.InstallError(
            f"missing Python packages: {', '.join(names)}; rerun with --install-dependencies"
        )


def _segment(args: argparse.Namespace) -> None:
    from MiniSAMSegmentLib.logic import (
        MiniSAMSegmentLogic,
        slice_axis,
        volume_arrays,
        write_mask_to_segment,
        write_segmentation,
    )
    from MiniSAMSegmentLib.mrml_context import mrml_context

    from minisam.atomic import refuse_overwriting_inputs
    from minisam.imageio import check_image_file, check_output_path
    from minisam.input_checks import check_finite
    from minisam.library_noise import native_output_captured
    from minisam.prompt_file import read_prompt_file
    from minisam.propagation import PropagationSettings

    output = check_output_path(args.output, (".seg.nrrd",))
    refuse_overwriting_inputs(
        [("--output", output)], [args.input, args.prompts, args.model, args.adapter]
    )
    prompts = read_prompt_file(args.prompts)
    context = mrml_context()
    if Path(args.input).is_file():  # the same header and payload checks as minisam segment
        check_image_file(args.input)
    with native_output_captured():  # VTK/ITK messages: --verbose shows them
        volume = context.load_volume(args.input)
    array = volume_arrays(volume).array
    check_finite(array, args.input)  # the same NaN/inf rule as minisam segment
    axis = slice_axis(volume, args.axis)
    _validate(prompts, array.shape, axis, args.axis)
    logic = MiniSAMSegmentLogic(
        args.model,
        device=args.device,
        modality=args.modality,
        adapter=args.adapter,
        runtime=args.runtime,
        precision=args.precision,
    )
    settings = PropagationSettings(min_score=args.min_score, max_slices=args.max_slices)
    try:
        result = logic.segment(volume, axis, prompts, propagate=args.propagate, settings=settings)
        description, encoder = logic.describe(), logic.engine.encoder.describe()
    finally:
        logic.release()  # the background worker stops
    segmentation = context.new_segmentation(volume)
    segment_id = write_mask_to_segment(segmentation, "", volume, result.labels, mode="replace")
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    segment.SetName(args.segment_name)
    segment.SetNameAutoGenerated(
        False
    )  # a given name: Slicer must not rename it (e.g. by terminology)
    with native_output_captured():
        write_segmentation(segmentation, output)
    filled = sorted(result.slices)
    print(
        f"{PROG}: {len(filled)} slices along axis {axis} ({filled[0]}..{filled[-1]}) -> {output} "
        f"({description}; image encoder: {encoder})"
    )


def _validate(prompts: dict, shape: tuple[int, ...], axis: int, view: str) -> None:
    """Check every prompt against its slice before the model is loaded (cheap errors first)."""
    from minisam.errors import PromptError

    height, width = (n for a, n in enumerate(shape) if a != axis)
    for index, prompt in prompts.items():
        if not 0 <= index < shape[axis]:
            raise PromptError(
                f"slice {index} is out of range: {view} has slices 0..{shape[axis] - 1}"
            )
        prompt.validate((height, width), where=f"slice {index} ({view})")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:  # Slicer normally consumes it; tolerate it either way
        args = args[1:]
    return run(args)


def guarded(program: Callable[[], int]) -> int:
    """``program()``'s exit code; an unexpected error is reported (traceback, then one line) as 1.

    Slicer without ``--testing`` keeps running after an uncaught exception in a
    ``--python-script``, so a batch job must never let one escape.
    """
    try:
        return program()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 (the last line of defence of a batch process)
        traceback.print_exc()
        reason = str(error).splitlines()[0] if str(error) else ""
        print(f"{PROG}: unexpected error: {type(error).__name__}: {reason}", file=sys.stderr)
        return EXIT_FAILURE


def _exit(code: int) -> None:
    """Slicer's exit inside the application (so --testing cannot override the code), else sys.exit."""
    import slicer

    if getattr(slicer, "app", None) is not None:
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(guarded(main))
