"""What the training commands share: data options, case splits, optimisation options, progress."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from minisam.errors import InputError
from minisam.training.splits import split_cases

__all__ = [
    "JsonLines",
    "add_data_arguments",
    "add_optimisation_arguments",
    "check_checkpoint_out",
    "check_common",
    "check_label_grids",
    "image_mask_pairs",
    "load_samples",
    "memory_hint",
    "refuse_clobbering",
    "refuse_existing",
    "settings_from_args",
    "split_cases",
    "training_progress",
]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--manifest (repeatable) or --images/--masks, --max-slices, --val-fraction."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--manifest",
        action="append",
        metavar="CSV",
        help="manifest CSV as minisam evaluate reads it: image,label[,label_value,modality] "
        "(paths relative to it; repeatable)",
    )
    data.add_argument("--images", metavar="DIR", help="folder of 2D images (with --masks)")
    data.add_argument("--masks", metavar="DIR", help="folder of masks named like the images")
    data.add_argument(
        "--mask-suffix", default="", help="mask name = image stem + SUFFIX + ext (e.g. _mask)"
    )
    data.add_argument(
        "--max-slices", type=int, metavar="K", help="few-shot: use at most K slices (by case)"
    )
    data.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of cases held back for validation"
    )


def add_optimisation_arguments(
    parser: argparse.ArgumentParser,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int | None,
    prompted: bool = True,
) -> None:
    """Epochs, batch, learning rate, early stopping, time budget, seed, resume, progress; with
    ``prompted`` (training from simulated prompts) also the prompt simulation and augmentation."""
    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=int, default=epochs)
    group.add_argument("--batch-size", type=int, default=batch_size, help="global batch size")
    group.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    group.add_argument(
        "--patience",
        type=int,
        default=patience,
        help="stop after N epochs without a better validation Dice",
    )
    group.add_argument("--max-minutes", type=float, help="stop (resumably) after this budget")
    if prompted:
        _add_prompt_simulation(group)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--resume", action="store_true", help="continue an unfinished run from its resume file"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_prompt_simulation(group) -> None:
    group.add_argument(
        "--correction-clicks",
        type=int,
        default=1,
        help="corrective clicks per sample after its first prompt, as in SAM (default: 1)",
    )
    group.add_argument(
        "--box-probability",
        type=float,
        default=0.6,
        help="share of training sessions that start from a box (else from clicks; default: 0.6)",
    )
    group.add_argument(
        "--geometric-aug",
        type=float,
        default=0.5,
        help="share of samples given a small random rotation/scale/shift, no flips (default: 0.5)",
    )


def settings_from_args(settings_class: type, args: argparse.Namespace, **more):
    """``settings_class`` (a TrainSettings) filled from the optimisation options (the prompt
    simulation's only when the command has them; else the settings' defaults, unused)."""
    prompted = {}
    if hasattr(args, "correction_clicks"):
        if args.correction_clicks < 0:
            raise InputError(f"--correction-clicks must be >= 0, not {args.correction_clicks}")
        if not 0.0 <= args.geometric_aug <= 1.0:
            raise InputError(f"--geometric-aug must be in [0, 1], not {args.geometric_aug}")
        if not 0.0 <= args.box_probability <= 1.0:
            raise InputError(f"--box-probability must be in [0, 1], not {args.box_probability}")
        prompted = {
            "correction_clicks": args.correction_clicks,
            "geometric_augmentation": args.geometric_aug,
            "box_probability": args.box_probability,
        }
    return settings_class(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        patience=args.patience,
        max_minutes=args.max_minutes,
        **prompted,
        **more,
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="where to train: cpu, cuda, cuda:N or auto (the GPU when there is one; default)",
    )


def training_device(name: str):
    """The torch device of ``--device`` (auto: CUDA when available), or a one-line InputError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device here")
    return device


def check_common(args: argparse.Namespace) -> None:
    """One-line errors for the shared options."""
    if bool(args.manifest) == bool(args.images or args.masks):
        raise InputError("give either --manifest CSV or --images DIR --masks DIR")
    if bool(args.images) != bool(args.masks):
        raise InputError("--images and --masks go together")
    if args.max_slices is not None and args.max_slices < 2:
        raise InputError(f"--max-slices must be >= 2 (train + validation), not {args.max_slices}")
    if not 0.0 < args.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in (0, 1), not {args.val_fraction}")
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.patience is not None and args.patience < 1:
        raise InputError(f"--patience must be >= 1, not {args.patience}")
    if not args.lr > 0:
        raise InputError(f"--lr must be > 0, not {args.lr}")


def image_mask_pairs(images: Path, masks: Path, suffix: str = "") -> list[tuple[Path, Path]]:
    """(image, mask) for every image in ``images`` whose mask ``stem+suffix+ext`` is in ``masks``."""
    if not images.is_dir() or not masks.is_dir():
        raise InputError(f"--images {images} and --masks {masks} must be folders")
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith(".")):
        stem, ext = image.name.split(".", 1) if "." in image.name else (image.name, "")
        mask = masks / (f"{stem}{suffix}.{ext}" if ext else f"{stem}{suffix}")
        if mask.is_file():
            pairs.append((image, mask))
    if not pairs:
        raise InputError(f"no image in {images} has a mask in {masks} (mask suffix {suffix!r})")
    return pairs


def load_samples(args: argparse.Namespace, modality: str = "auto") -> tuple[list, str]:
    """The slice samples the data options name, and a one-line description of their source."""
    from minisam.training.manifest import read_training_manifest, samples_from_manifest
    from minisam.training.slice_samples import samples_from_pairs

    if args.manifest:
        specs = [spec for path in args.manifest for spec in read_training_manifest(path)]
        check_label_grids((spec.image, spec.label) for spec in specs)
        samples = samples_from_manifest(specs, modality)
        source = ", ".join(args.manifest)
    else:
        pairs = image_mask_pairs(Path(args.images), Path(args.masks), args.mask_suffix)
        check_label_grids(pairs)
        samples = samples_from_pairs(pairs, "folders", modality)
        source = f"{args.images} + {args.masks}"
    if not samples:
        raise InputError(f"{source}: no annotated slice (every mask is empty or too small)")
    return samples, source


def check_label_grids(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Refuse a label map that is not on its image's grid, from the headers (no voxels read).

    Size, spacing, origin and direction are compared by :func:`minisam.geometry.grid_mismatch`
    (tolerance :data:`minisam.geometry.GRID_TOLERANCE`) for volume files; 2D pictures carry no
    patient geometry and are compared by shape when they are read.
    """
    from minisam.geometry import grid_mismatch
    from minisam.imageio import read_header

    for image, label in pairs:
        image_header, label_header = read_header(image), read_header(label)
        if image_header is None or label_header is None:
            continue
        mismatch = grid_mismatch(image_header, label_header)
        if mismatch is not None:
            raise InputError(f"label {label} is not on the grid of image {image}: {mismatch}")


class JsonLines:
    """Machine-readable progress: one JSON object per line on ``stream`` (stdout), flushed at once.

    Each object has an ``event`` key ("start", "phase", "step", "validation", "result", "error")
    and plain values (NaN and infinities become null, paths strings), so a program that started the
    command (MiniSAMTrain) reads it line by line while the run goes on.
    """

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def emit(self, event: str, **fields) -> None:
        record = _plain({"event": event, **fields})
        self.stream.write(json.dumps(record, allow_nan=False) + "\n")
        self.stream.flush()


def _plain(value):
    """``value`` with JSON-safe leaves (non-finite floats -> None, other objects -> str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)  # numpy and torch scalars
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


@contextmanager
def training_progress(
    total: int, desc: str, enabled: bool, lines: JsonLines | None = None
) -> Iterator:
    """A tqdm bar on stderr (or, with ``lines``, JSON step and validation events) and the trainer
    callback that drives it.

    The first Ctrl+C asks the trainer to stop after the current step (it then keeps the best
    weights and its resume file); a second one interrupts at once.
    """
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit="step",
        disable=not enabled or lines is not None,
        file=sys.stderr,
    )
    stop = {"asked": False, "steps": 0}

    def on_sigint(signum, frame) -> None:
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        tqdm.write("stopping after this step (Ctrl+C again to abort)", file=sys.stderr)

    def progress(info: dict) -> bool:
        stage = int(info.get("stage", 1))
        if "validation" in info:
            bar.set_postfix(val_dice=f"{info['validation']['val_dice']:.3f}")
            if lines is not None:
                row = info["validation"]
                lines.emit(
                    "validation", epoch=info["epoch"], stage=stage, val_dice=row["val_dice"],
                    train_loss=row.get("train_loss"),
                )  # fmt: skip
        else:
            stop["steps"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.3f}")
            if lines is not None:
                lines.emit(
                    "step", step=stop["steps"], total=total, epoch=info["epoch"], stage=stage,
                    loss=info["loss"],
                )  # fmt: skip
        return not stop["asked"]

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        yield progress
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
        bar.close()


@contextmanager
def memory_hint(batch_size: int) -> Iterator[None]:
    """Turn an out-of-memory error into one line that says which option to lower."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise InputError(
            f"out of memory at --batch-size {batch_size} ({type(exc).__name__}); lower --batch-size"
        ) from None
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower():
            raise
        raise InputError(
            f"out of memory at --batch-size {batch_size}; lower --batch-size"
        ) from None


def refuse_existing(path: Path, overwrite: bool, resume: bool = False) -> None:
    """No silent overwrite of an earlier result."""
    if path.exists() and not overwrite and not resume:
        raise InputError(f"--out {path} exists; choose another path or pass --overwrite")


def check_checkpoint_out(args: argparse.Namespace) -> Path:
    """``--out``: a new .safetensors file in an existing folder (or --overwrite / --resume)."""
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: must end in .safetensors")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    refuse_existing(out, args.overwrite, args.resume)
    refuse_clobbering(args, out)
    return out


def refuse_clobbering(args: argparse.Namespace, out: Path) -> None:
    """Refuse an ``--out`` that is, or (a folder) holds, one of the run's inputs.

    The inputs are the manifests and every image and label they list, ``--images``/``--masks``, the
    ``--unlabelled`` data and the model files (``--model``, ``--teacher``, ``--init``).
    """
    from minisam.atomic import refuse_overwriting_inputs
    from minisam.training.manifest import read_training_manifest

    inputs: list[str | Path | None] = [args.images, args.masks]
    for manifest in args.manifest or []:
        inputs.append(manifest)
        inputs += [p for spec in read_training_manifest(manifest) for p in (spec.image, spec.label)]
    inputs += getattr(args, "unlabelled", None) or []
    inputs += [getattr(args, name, None) for name in ("model", "teacher", "init")]
    refuse_overwriting_inputs([("--out", out)], inputs)
