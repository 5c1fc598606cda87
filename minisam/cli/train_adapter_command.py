"""``minisam train-adapter``: few-shot LoRA / AdaLoRA adapter on the frozen (NF4) base model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from minisam.errors import InputError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-adapter",
        help="train a per-modality LoRA adapter on a few annotated slices",
        description="Train a LoRA (QLoRA on the NF4 base by default) or AdaLoRA adapter from a "
        "manifest CSV (image,label[,label_value,modality]) or from 2D image/mask folders, and "
        "write an adapter folder (optionally installing it into the adapter library).",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", metavar="CSV", help="manifest CSV (paths relative to it)")
    data.add_argument("--images", metavar="DIR", help="folder of 2D images (with --masks)")
    data.add_argument("--masks", metavar="DIR", help="folder of masks named like the images")
    data.add_argument(
        "--mask-suffix", default="", help="mask name = image stem + SUFFIX + ext (e.g. _mask)"
    )
    data.add_argument(
        "--max-slices", type=int, metavar="K", help="few-shot: use at most K slices (by case)"
    )
    data.add_argument(
        "--val-fraction", type=float, default=0.2, help="cases held back for early stopping"
    )
    parser.add_argument("--modality", required=True, help="adapter modality (US, CT, MR, DX...)")
    parser.add_argument("--model", default="default", help="base model (default: default)")
    parser.add_argument("--quant", choices=("nf4", "int8", "fp32"), default="nf4")
    parser.add_argument("--method", choices=("lora", "adalora"), default="lora")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--include-decoder", action="store_true", help="also adapt the decoder")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="adapter name (default: <modality>_adapter)")
    parser.add_argument("--out", required=True, metavar="FOLDER", help="adapter folder to write")
    parser.add_argument("--install", action="store_true", help="also install into the library")
    parser.add_argument("--library", help="adapter library folder for --install")
    parser.add_argument("--replace", action="store_true", help="--install over an adapter")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    if bool(args.manifest) == bool(args.images or args.masks):
        raise InputError("give either --manifest CSV or --images DIR --masks DIR")
    if args.images and not args.masks or args.masks and not args.images:
        raise InputError("--images and --masks go together")
    if args.max_slices is not None and args.max_slices < 2:
        raise InputError(f"--max-slices must be >= 2 (train + validation), not {args.max_slices}")
    if not 0.0 < args.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in (0, 1), not {args.val_fraction}")
    for flag in ("rank", "epochs", "batch_size", "patience"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1")
    if not args.lr > 0:
        raise InputError(f"--lr must be > 0, not {args.lr}")
    from minisam.adapters.adapter_io import modality_family
    from minisam.adapters.lora import check_adapter_name

    if modality_family(args.modality) is None:
        raise InputError(f"--modality {args.modality!r} is not a known modality (US, CT, MR, ...)")
    check_adapter_name(args.name or f"{modality_family(args.modality).lower()}_adapter")


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


def split_cases(
    samples: list, max_slices: int | None, val_fraction: float, seed: int
) -> tuple[list, list]:
    """(train, val) by case: cases shuffled with ``seed``, at most ``max_slices`` slices in all."""
    cases = sorted({s.case for s in samples})
    if len(cases) < 2:
        raise InputError(f"need annotated slices from at least 2 cases, got {len(cases)}")
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    by_case = {}
    for case in cases:  # a volume's slices in random order, so K slices spread over it
        group = [s for s in samples if s.case == case]
        by_case[case] = [group[i] for i in rng.permutation(len(group))]
    chosen, count = [], 0
    for case in order:
        if max_slices is not None and count >= max_slices:
            break
        room = by_case[case] if max_slices is None else by_case[case][: max_slices - count]
        chosen.append((case, room))
        count += len(room)
    n_val = min(len(chosen) - 1, max(1, round(val_fraction * len(chosen))))
    val = [s for _, group in chosen[:n_val] for s in group]
    train = [s for _, group in chosen[n_val:] for s in group]
    return train, val


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from tqdm import tqdm

    from minisam.adapters import AdapterLibrary, AdapterSpec, save_adapter
    from minisam.adapters.adapter_io import adapter_folder_size, modality_family
    from minisam.model_loader import load_model
    from minisam.training.adapter_trainer import AdapterTrainSettings, train_adapter
    from minisam.training.manifest import read_manifest, samples_from_manifest
    from minisam.training.slice_samples import samples_from_pairs

    family = modality_family(args.modality)
    name = args.name or f"{family.lower()}_adapter"
    norm = {"US": "us", "CT": "ct", "MR": "mr", "XRAY": "xray"}.get(family, "auto")
    if args.manifest:
        samples = samples_from_manifest(read_manifest(args.manifest), "manifest", norm)
        source = str(args.manifest)
    else:
        pairs = image_mask_pairs(Path(args.images), Path(args.masks), args.mask_suffix)
        samples = samples_from_pairs(pairs, "folders", norm)
        source = f"{args.images} + {args.masks}"
    train, val = split_cases(samples, args.max_slices, args.val_fraction, args.seed)
    settings = AdapterTrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        patience=args.patience,
        max_minutes=args.max_minutes,
    )
    steps = args.epochs * -(-len(train) // args.batch_size)
    spec = AdapterSpec(
        method=args.method,
        rank=args.rank,
        alpha=2.0 * args.rank,
        include_decoder=args.include_decoder,
        init_r=max(args.rank, round(1.5 * args.rank)),
        target_r=args.rank,
        tinit=steps // 10 if args.method == "adalora" else 0,
        tfinal=steps // 5 if args.method == "adalora" else 0,
        total_step=steps if args.method == "adalora" else None,
    )
    loaded = load_model(args.model)
    bar = tqdm(total=steps, desc="train-adapter", unit="step", disable=args.quiet, file=sys.stderr)

    def progress(info: dict) -> bool:
        if "validation" in info:
            bar.set_postfix(val_dice=f"{info['validation']['val_dice']:.3f}")
        else:
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.3f}")
        return True

    try:
        model, report = train_adapter(
            loaded, train, val, spec, settings, quant=args.quant, progress=progress, name=name
        )
    finally:
        bar.close()
    metadata = {
        "name": name,
        "modality": family,
        "base_hash": report.base_hash,
        "base_model": args.model,
        "training_data": {
            "source": source,
            "train_slices": len(train),
            "val_slices": len(val),
            "train_cases": len({s.case for s in train}),
            "val_cases": len({s.case for s in val}),
            "seed": args.seed,
            "epochs_run": len(report.history),
            "quant": args.quant,
        },
        "metrics": {
            "val_dice": round(report.best_val_dice, 4),
            "zero_shot_val_dice": round(report.zero_shot_val_dice, 4),
            "best_epoch": report.best_epoch,
            "history": report.history,
        },
    }
    folder = save_adapter(model, name, args.out, metadata)
    print(
        f"adapter {name} -> {folder} ({adapter_folder_size(folder) / 1e6:.2f} MB, "
        f"{report.trainable_params} params): val Dice {report.zero_shot_val_dice:.3f} zero-shot "
        f"-> {report.best_val_dice:.3f} (epoch {report.best_epoch}, {report.seconds:.0f} s)"
    )
    if args.install:
        info = AdapterLibrary(args.library).install(folder, replace=args.replace)
        print(f"installed {info.name} into {info.path}")
    return 0
