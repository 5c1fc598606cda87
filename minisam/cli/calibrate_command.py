"""``minisam calibrate-int8``: make a model's OpenVINO INT8 image encoder from the user's own slices.

Reads every image (2D files whole; volumes: up to ``--slices-per-volume`` non-blank slices evenly spaced
along the first array axis), normalises them as ``minisam segment`` does, quantizes the cached f32
export on them (:func:`minisam.runtime.int8_encoder.calibrate_encoder`) and prints how far the INT8
embeddings are from f32's on the calibration slices. Afterwards ``--precision int8`` runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minisam.errors import InputError, PromptError

DEFAULT_SLICES_PER_VOLUME = 8
ERROR_CHECK_SLICES = 3


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "calibrate-int8",
        help="make the INT8 image encoder (--precision int8) from slices like yours",
        description="Quantize a model's OpenVINO image encoder to INT8 (NNCF post-training "
        "quantization; pip install nncf) on calibration slices of the kind you segment (20-50 "
        "slices are plenty), cached for --precision int8. On a CPU without BF16 it runs the encoder "
        "about 2.3x faster than f32; masks move slightly (docs/bench/encoder_runtimes.md).",
    )
    parser.add_argument("images", nargs="+", help="2D images or volumes (any format segment reads)")
    parser.add_argument(
        "--model", default="default", help="the model to calibrate (as for minisam segment)"
    )
    parser.add_argument(
        "--modality",
        default="auto",
        help="intensity preset (as for minisam segment; default: from each image)",
    )
    parser.add_argument(
        "--slices-per-volume",
        type=int,
        default=DEFAULT_SLICES_PER_VOLUME,
        help="slices taken from each volume, evenly spaced (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def volume_slices(volume: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` indices along axis 0, evenly spaced over the slices that are not blank."""
    flat = volume.reshape(volume.shape[0], -1)
    varied = np.flatnonzero(flat.max(axis=1) > flat.min(axis=1))
    if varied.size <= count:
        return [int(i) for i in varied]
    picks = np.linspace(0, varied.size - 1, count).round().astype(int)
    return [int(varied[i]) for i in picks]


def calibration_slices(paths: list[Path], modality: str, per_volume: int):
    """(name, (H, W, 3) 0..255 image) of every calibration slice of ``paths``."""
    from minisam.imageio import read_image
    from minisam.intensity import choose_preset, normalize_intensity, to_rgb

    for path in paths:
        image = read_image(path)
        normalized = normalize_intensity(image.array, choose_preset(modality, image))
        if image.is_volume:
            for index in volume_slices(normalized, per_volume):
                yield f"{path.name}[{index}]", to_rgb(normalized[index])
        else:
            yield path.name, to_rgb(normalized)


def run(args: argparse.Namespace) -> int:
    from minisam.engine import SamEngine
    from minisam.model_loader import load_model
    from minisam.runtime.int8_encoder import calibrate_encoder

    if args.slices_per_volume < 1:
        raise PromptError(f"--slices-per-volume {args.slices_per_volume} must be at least 1")
    paths = [Path(p) for p in args.images]
    for path in paths:
        if not path.exists():
            raise InputError(f"image {path} does not exist")
    loaded = load_model(args.model)
    engine = SamEngine(loaded.sam, loaded.config, "cpu", runtime="torch")  # preprocessing only
    names, inputs = [], []
    slices = calibration_slices(paths, args.modality, args.slices_per_volume)
    for name, rgb in tqdm(
        slices, desc="reading", unit="slice", disable=args.quiet, file=sys.stderr
    ):
        model_input, _ = engine.model_input(rgb.astype(np.float32))
        names.append(name)
        inputs.append(np.ascontiguousarray(model_input.detach().cpu().numpy()))
    if not inputs:
        raise InputError("the images hold no slice to calibrate on (every slice is blank)")

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr)

    size = loaded.config.image_size
    folder = calibrate_encoder(loaded.sam.image_encoder, size, inputs, names, say, args.quiet)
    error = embedding_error(loaded.sam, size, inputs[:ERROR_CHECK_SLICES])
    print(
        f"INT8 encoder of {args.model} calibrated on {len(inputs)} slices: {folder}\n"
        f"embedding error vs f32 on {min(len(inputs), ERROR_CHECK_SLICES)} of them: "
        f"{100 * error:.1f} % (relative L2); use it with --precision int8"
    )
    return 0


def embedding_error(sam, input_size: int, inputs: list[np.ndarray]) -> float:
    """Mean relative L2 distance of the INT8 encoder's features from the f32 export's on ``inputs``."""
    import torch

    from minisam.runtime.compiled import CompiledEncoder

    f32 = CompiledEncoder(sam.image_encoder, "openvino", input_size, "f32")
    int8 = CompiledEncoder(sam.image_encoder, "openvino", input_size, "int8")
    errors = []
    with torch.inference_mode():
        for array in inputs:
            image = torch.from_numpy(array)
            reference, quantized = f32(image), int8(image)
            errors.append(float((quantized - reference).norm() / reference.norm()))
    return float(np.mean(errors))
