"""``minisam train-base``: train a whole SAM-architecture model (from scratch or a checkpoint).

Runs on one process or, launched by ``torchrun --nproc-per-node N minisam train-base ...``, on N
processes with DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minisam.cli.training_args import (
    add_data_arguments,
    add_device_argument,
    add_optimisation_arguments,
    check_checkpoint_out,
    check_common,
    load_samples,
    memory_hint,
    settings_from_args,
    split_cases,
    training_device,
    training_progress,
)
from minisam.errors import InputError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-base",
        help="train a SAM-architecture model on annotated images and volumes",
        description="Train all weights of a SAM-architecture model (Dice + focal loss on the best "
        "of SAM's masks, MSE on its IoU head, simulated box/point prompts) on manifest CSVs or "
        "image/mask folders, validate on held-out cases every epoch and keep the best checkpoint "
        "in OUT (a MiniSAM .safetensors). Ctrl+C stops after the current step; --resume continues "
        "from OUT's .resume.pt. Multi-process: torchrun --nproc-per-node N $(which minisam) ...",
    )
    add_data_arguments(parser)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--arch", default="small", help="architecture preset to train from scratch")
    start.add_argument("--init", metavar="MODEL", help="start from this model (name or file)")
    parser.add_argument(
        "--modality", default="auto", help="intensity normalisation when a row has none"
    )
    add_device_argument(parser)
    add_optimisation_arguments(parser, epochs=10, batch_size=8, lr=3e-4, patience=None)
    parser.add_argument("--out", required=True, metavar="FILE", help="checkpoint .safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    check_common(args)
    check_checkpoint_out(args)


def _start_model(args: argparse.Namespace):
    from minisam.model_loader import load_model
    from minisam.quantization import quantized_scheme_of

    loaded = (
        load_model(args.init) if args.init else load_model(f"random:{args.arch}", seed=args.seed)
    )
    if args.init and quantized_scheme_of(loaded.sam).groups:
        raise InputError(f"--init {args.init}: a quantized model cannot be trained in full")
    return loaded


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from minisam.training.base_trainer import TrainSettings, resume_file, train_base
    from minisam.training.distributed import init_from_env
    from minisam.training.model_inputs import to_model_inputs

    device = training_device(args.device)
    world = init_from_env(device)
    if device.type == "cuda" and world.size > 1:
        import torch

        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(args.out)
    if args.resume and not resume_file(out).is_file():
        raise InputError(f"--resume: no resume file {resume_file(out)} (nothing to continue)")
    samples, source = load_samples(args, args.modality)
    train, val = split_cases(samples, args.max_slices, args.val_fraction, args.seed)
    loaded = _start_model(args)
    loaded.sam.to(device)
    settings = settings_from_args(TrainSettings, args)
    card = {
        "name": out.stem,
        "start": args.init or f"random:{args.arch}",
        "data": source,
        "train_slices": len(train),
        "val_slices": len(val),
        "train_cases": len({s.case for s in train}),
        "val_cases": len({s.case for s in val}),
        "processes": world.size,
    }
    steps = args.epochs * -(-len(train) // args.batch_size)
    show = not args.quiet and world.is_main
    with training_progress(steps, "train-base", show) as progress:
        with memory_hint(args.batch_size):
            report = train_base(
                loaded.sam, loaded.config, to_model_inputs(train, loaded.config),
                to_model_inputs(val, loaded.config), out, settings, card, progress,
                resume_from=resume_file(out) if args.resume else None, world=world,
            )  # fmt: skip
    if world.is_main:
        state = "stopped (--resume continues)" if report.cancelled else "done"
        print(
            json.dumps(
                {
                    "out": str(out),
                    "state": state,
                    "best_val_dice": round(report.best_val_dice, 4),
                    "best_epoch": report.best_epoch,
                    "epochs_run": len(report.history),
                    "minutes": round(report.seconds / 60, 2),
                }
            )
        )
    return 0
