"""``minisam train-adapter``: few-shot LoRA / AdaLoRA adapter on the frozen (NF4) base model."""

from __future__ import annotations

import argparse
from pathlib import Path

from minisam.cli.training_args import (
    add_data_arguments,
    add_optimisation_arguments,
    check_common,
    load_samples,
    memory_hint,
    refuse_existing,
    settings_from_args,
    split_cases,
    training_progress,
)
from minisam.errors import InputError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-adapter",
        help="train a per-modality LoRA adapter on a few annotated slices",
        description="Train a LoRA (QLoRA on the NF4 base by default) or AdaLoRA adapter from "
        "manifest CSVs (image,label[,label_value,modality]) or from 2D image/mask folders, and "
        "write an adapter folder (optionally installing it into the adapter library). Ctrl+C stops "
        "after the current step; --resume continues from OUT.resume.pt.",
    )
    add_data_arguments(parser)
    parser.add_argument("--modality", required=True, help="adapter modality (US, CT, MR, DX...)")
    parser.add_argument("--model", default="default", help="base model (default: default)")
    parser.add_argument(
        "--quant",
        default="nf4",
        help="frozen base precision: nf4 (QLoRA, default), int8, fp32 or a scheme (nf4:mlp+int8:attn)",
    )
    parser.add_argument(
        "--method",
        choices=("lora", "adalora", "adalora-qat"),
        default="lora",
        help="adalora-qat: AdaLoRA on the fp32 base, then fine-tuned through --qat-scheme layers",
    )
    parser.add_argument(
        "--qat-scheme", default="int8:attn", help="adalora-qat: layers quantized in stage 2"
    )
    parser.add_argument("--qat-epochs", type=int, help="adalora-qat: stage-2 epochs (default half)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--include-decoder", action="store_true", help="also adapt the decoder")
    add_optimisation_arguments(parser, epochs=20, batch_size=4, lr=1e-3, patience=4)
    parser.add_argument("--name", help="adapter name (default: <modality>_adapter)")
    parser.add_argument("--out", required=True, metavar="FOLDER", help="adapter folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--install", action="store_true", help="also install into the library")
    parser.add_argument("--library", help="adapter library folder for --install")
    parser.add_argument("--replace", action="store_true", help="--install over an adapter")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    check_common(args)
    if args.rank < 1:
        raise InputError(f"--rank must be >= 1, not {args.rank}")
    from minisam.training.adapter_trainer import check_quant

    check_quant(args.quant)
    if args.method == "adalora-qat":
        if not check_quant(args.qat_scheme).groups:
            raise InputError(f"--qat-scheme {args.qat_scheme!r} quantizes nothing (e.g. int8:attn)")
        if args.resume:
            raise InputError("--resume is not available for --method adalora-qat (two stages)")
    if args.qat_epochs is not None and args.qat_epochs < 1:
        raise InputError(f"--qat-epochs must be >= 1, not {args.qat_epochs}")
    from minisam.adapters.adapter_io import modality_family
    from minisam.adapters.lora import check_adapter_name

    if modality_family(args.modality) is None:
        raise InputError(f"--modality {args.modality!r} is not a known modality (US, CT, MR, ...)")
    check_adapter_name(args.name or f"{modality_family(args.modality).lower()}_adapter")
    refuse_existing(Path(args.out), args.overwrite, args.resume)


def adapter_spec(args: argparse.Namespace, steps: int):
    """The LoRA / AdaLoRA spec the options ask for (AdaLoRA's budget schedule scaled to ``steps``)."""
    from minisam.adapters import AdapterSpec

    adalora = args.method in ("adalora", "adalora-qat")
    return AdapterSpec(
        method="adalora" if adalora else "lora",
        rank=args.rank,
        alpha=2.0 * args.rank,
        include_decoder=args.include_decoder,
        init_r=max(args.rank, round(1.5 * args.rank)),
        target_r=args.rank,
        tinit=steps // 10 if adalora else 0,
        tfinal=steps // 5 if adalora else 0,
        total_step=steps if adalora else None,
    )


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from minisam.adapters import AdapterLibrary, save_adapter
    from minisam.adapters.adapter_io import adapter_folder_size, modality_family
    from minisam.model_loader import load_model
    from minisam.training.adapter_trainer import AdapterTrainSettings, train_adapter

    family = modality_family(args.modality)
    name = args.name or f"{family.lower()}_adapter"
    norm = {"US": "us", "CT": "ct", "MR": "mr", "XRAY": "xray"}.get(family, "auto")
    samples, source = load_samples(args, norm)
    train, val = split_cases(samples, args.max_slices, args.val_fraction, args.seed)
    settings = settings_from_args(AdapterTrainSettings, args)
    steps = args.epochs * -(-len(train) // args.batch_size)
    spec = adapter_spec(args, steps)
    loaded = load_model(args.model)
    out = Path(args.out)
    state_file = out.with_name(out.name + ".resume.pt")
    if args.resume and not state_file.is_file():
        raise InputError(f"--resume: no resume file {state_file} (nothing to continue)")
    qat = args.method == "adalora-qat"
    total = steps + (args.qat_epochs or max(1, args.epochs // 2)) * steps // args.epochs * qat
    with training_progress(total, "train-adapter", not args.quiet) as progress:
        with memory_hint(args.batch_size):
            if qat:
                from minisam.training.qat import train_adapter_qat

                model, report, _ = train_adapter_qat(
                    loaded, train, val, spec, family, settings, args.qat_scheme, args.qat_epochs,
                    progress, name,
                )  # fmt: skip
            else:
                model, report = train_adapter(
                    loaded, train, val, spec, settings, args.quant, progress, name,
                    state_file=state_file, resume_from=state_file if args.resume else None,
                )  # fmt: skip
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
            "quant": report.quant,
            "finished": not report.cancelled,
        },
        "metrics": {
            "val_dice": round(report.best_val_dice, 4),
            "zero_shot_val_dice": round(report.zero_shot_val_dice, 4),
            "best_epoch": report.best_epoch,
            "history": report.history,
            **({"qat": report.extra} if qat else {}),
        },
    }
    folder = save_adapter(model, name, out, metadata)
    stopped = " (stopped early: --resume continues)" if report.cancelled else ""
    print(
        f"adapter {name} -> {folder} ({adapter_folder_size(folder) / 1e6:.2f} MB, "
        f"{report.trainable_params} params): val Dice {report.zero_shot_val_dice:.3f} zero-shot "
        f"-> {report.best_val_dice:.3f} (epoch {report.best_epoch}, {report.seconds:.0f} s){stopped}"
    )
    if qat:
        extra = report.extra
        print(
            f"AdaLoRA-QAT ({args.qat_scheme}): val Dice fp32 stage 1 {extra['stage1_val_dice']:.3f}, "
            f"quantized without QAT {extra.get('ptq_val_dice', float('nan')):.3f}, with QAT "
            f"{report.best_val_dice:.3f}; use it with --quant {report.quant}"
        )
    if args.install:
        info = AdapterLibrary(args.library).install(folder, replace=args.replace)
        print(f"installed {info.name} into {info.path}")
    return 0
