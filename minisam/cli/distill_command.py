"""``minisam distill``: a teacher's image encoder → a compact student that keeps its decoder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from minisam.cli.training_args import (
    add_data_arguments,
    add_optimisation_arguments,
    check_checkpoint_out,
    check_common,
    load_samples,
    memory_hint,
    settings_from_args,
    split_cases,
    training_progress,
)
from minisam.errors import InputError


def default_cache() -> Path:
    """``$MINISAM_CACHE/teacher_embeddings`` (default ``~/.cache/minisam/teacher_embeddings``)."""
    root = os.environ.get("MINISAM_CACHE") or Path.home() / ".cache" / "minisam"
    return Path(root).expanduser() / "teacher_embeddings"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "distill",
        help="distil a teacher's image encoder into a compact student",
        description="Train a student image encoder (an architecture preset; its patch size is set "
        "so its embedding grid is the teacher's) to reproduce the teacher's image embeddings "
        "(MSE and/or cosine), on the images of manifest CSVs or image/mask folders. The student "
        "keeps the teacher's prompt encoder and mask decoder; teacher embeddings are cached on "
        "disk so the teacher runs once per image. Validation: box Dice of the student. "
        "--finetune-epochs then trains the whole student end to end on the masks.",
    )
    add_data_arguments(parser)
    parser.add_argument("--teacher", default="default", help="teacher model (name or file)")
    parser.add_argument(
        "--teacher-quant", default="fp32", help="run the frozen teacher quantized (nf4, int8)"
    )
    parser.add_argument("--student", default="tiny", help="student encoder preset (default tiny)")
    parser.add_argument("--student-image-size", type=int, help="student input size (px)")
    parser.add_argument("--mse-weight", type=float, default=1.0)
    parser.add_argument("--cosine-weight", type=float, default=1.0)
    parser.add_argument(
        "--views",
        type=int,
        default=0,
        help="augmented views of each training image besides the original (teacher and student "
        "see the same view; the teacher embeds each once; default 0)",
    )
    parser.add_argument(
        "--unlabelled",
        action="append",
        default=[],
        metavar="IMAGE",
        help="an image or volume without labels to distil on as well (every slice; repeatable)",
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="end-to-end mask-loss epochs afterwards"
    )
    parser.add_argument("--modality", default="auto", help="normalisation when a row has none")
    parser.add_argument("--cache", help="teacher-embedding cache folder")
    # the loss is on embeddings (no prompts); its augmentation is --views
    add_optimisation_arguments(
        parser, epochs=20, batch_size=8, lr=1e-3, patience=None, prompted=False
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="student .safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    check_common(args)
    if args.mse_weight < 0 or args.cosine_weight < 0 or args.mse_weight + args.cosine_weight == 0:
        raise InputError("--mse-weight and --cosine-weight must be >= 0 and not both 0")
    if args.views < 0:
        raise InputError(f"--views must be >= 0, not {args.views}")
    if args.finetune_epochs < 0:
        raise InputError(f"--finetune-epochs must be >= 0, not {args.finetune_epochs}")
    check_checkpoint_out(args)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from minisam.model_config import count_parameters
    from minisam.model_loader import load_model
    from minisam.quantization import quantize_model
    from minisam.training.base_trainer import TrainSettings, train_base
    from minisam.training.distill import (
        DistillSettings,
        build_student,
        distill,
        distill_resume_file,
        student_config,
    )
    from minisam.training.distributed import init_from_env
    from minisam.training.embedding_store import EmbeddingStore, unique_images
    from minisam.training.model_inputs import to_model_inputs
    from minisam.training.slice_samples import unlabelled_slices

    world = init_from_env()
    out = Path(args.out)
    state = distill_resume_file(out)
    if args.resume and not state.is_file():
        raise InputError(f"--resume: no resume file {state} (nothing to continue)")
    teacher = load_model(args.teacher)
    teacher_hash = teacher.base_hash()
    config = student_config(teacher.config, args.student, args.student_image_size)
    if args.teacher_quant != "fp32":
        quantize_model(teacher, args.teacher_quant)
    samples, source = load_samples(args, args.modality)
    train, val = split_cases(samples, args.max_slices, args.val_fraction, args.seed)
    # Images only: the embedding loss needs no masks (the mask fine-tuning uses the labelled ones).
    unlabelled = [
        s for path in args.unlabelled for s in unlabelled_slices(path, "unlabelled", args.modality)
    ]
    import torch

    torch.manual_seed(args.seed)
    student = build_student(teacher, config)
    settings = settings_from_args(
        DistillSettings, args, mse_weight=args.mse_weight, cosine_weight=args.cosine_weight,
        augmented_views=args.views,
    )  # fmt: skip
    card = {
        "name": out.stem,
        "teacher": args.teacher,
        "teacher_hash": teacher_hash,
        "teacher_quant": args.teacher_quant,
        "student": args.student,
        "encoder_params": count_parameters(student.image_encoder),
        "data": source,
        "train_slices": len(train),
        "unlabelled_slices": len(unlabelled),
        "augmented_views": args.views,
        "val_slices": len(val),
    }
    cache = EmbeddingStore(teacher, Path(args.cache) if args.cache else default_cache())
    images = train + unlabelled
    train_inputs = (to_model_inputs(images, teacher.config), to_model_inputs(images, config))
    val_inputs = to_model_inputs(val, config)
    distinct = len(unique_images(train_inputs[1])) * (1 + args.views)
    steps = args.epochs * -(-distinct // args.batch_size)
    show = not args.quiet and world.is_main
    with training_progress(steps, "distill", show) as progress:
        with memory_hint(args.batch_size):
            report = distill(
                teacher, student, config, train_inputs, val_inputs, cache, out, settings, card,
                progress, resume_from=state if args.resume else None, world=world,
            )  # fmt: skip
    summary = {
        "out": str(out),
        "teacher_images_encoded": cache.computed,
        "distill_val_dice": round(report.history[-1]["val_dice"], 4),
        "distill_minutes": round(report.seconds / 60, 2),
    }
    if args.finetune_epochs and not report.cancelled:
        student = load_model(str(out)).sam
        tune = TrainSettings(
            epochs=args.finetune_epochs, batch_size=args.batch_size, learning_rate=args.lr / 3,
            seed=args.seed, max_minutes=args.max_minutes,
        )  # fmt: skip
        with training_progress(args.finetune_epochs * -(-len(train) // args.batch_size),
                               "fine-tune", show) as progress:  # fmt: skip
            tuned = train_base(
                student, config, to_model_inputs(train, config), val_inputs, out, tune,
                dict(card, finetune_epochs=args.finetune_epochs), progress, world=world,
                baseline=True,
            )  # fmt: skip
        summary.update(
            finetune_best_val_dice=round(tuned.best_val_dice, 4),
            finetune_minutes=round(tuned.seconds / 60, 2),
        )
    if world.is_main:
        print(json.dumps(summary))
    return 0
