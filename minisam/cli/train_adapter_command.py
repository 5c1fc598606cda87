"""``minisam train-adapter``: few-shot LoRA / AdaLoRA adapter on the frozen (NF4) base model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minisam.cli.training_args import (
    JsonLines,
    add_data_arguments,
    add_device_argument,
    add_optimisation_arguments,
    check_common,
    load_samples,
    memory_hint,
    refuse_clobbering,
    refuse_existing,
    settings_from_args,
    split_cases,
    training_device,
    training_progress,
)
from minisam.errors import InputError, MiniSAMError
from minisam.modality import AUTO, family_for_dicom, preset_for_family
from minisam.training.adapter_recipe import AUTO as AUTO_RECIPE

# Attention (qkv, proj) and MLP linears: lin1/lin2 in a ViT, fc1/fc2 in a TinyViT (a name the model's
# family lacks is refused when the adapter is attached).
ENCODER_CHOICES = ("qkv", "proj", "lin1", "lin2", "fc1", "fc2")
DECODER_CHOICES = ("q_proj", "k_proj", "v_proj", "out_proj", "lin1", "lin2", "heads")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-adapter",
        help="train a per-modality LoRA adapter on a few annotated slices",
        description="Train a LoRA (QLoRA on the NF4 base by default) or AdaLoRA adapter from "
        "manifest CSVs (image,label[,label_value,modality]) or from 2D image/mask folders, and "
        "write an adapter folder (optionally installing it into the adapter library). Ctrl+C stops "
        "after the current step; --resume continues from OUT.resume.pt. adalora-qat keeps stage "
        "1's resume file in OUT.stage1.resume.pt and its finished adapter in OUT.stage1/, so "
        "--resume continues stage 1 or, once it is done, stage 2 (all removed when the run ends).",
    )
    add_data_arguments(parser)
    parser.add_argument("--modality", required=True, help="adapter modality (US, CT, MR, DX...)")
    parser.add_argument("--model", default="default", help="base model (default: default)")
    add_device_argument(parser)
    parser.add_argument(
        "--quant",
        default="auto",
        help="frozen base precision: auto (default: nf4 = QLoRA for ViT encoders, fp32 and a frozen "
        "encoder embedded once for TinyViT ones such as the default), nf4, int8, fp32 or a scheme "
        "(nf4:mlp+int8:attn)",
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
    parser.add_argument(
        "--alpha", type=float, help="LoRA alpha (scale alpha/rank; default 2 x rank)"
    )
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    parser.add_argument(
        "--targets",
        default="auto",
        help=f"encoder linears to adapt, comma-separated from {','.join(ENCODER_CHOICES)}, or none "
        "with --include-decoder: a decoder-only adapter, trained on the frozen encoder's embeddings "
        "computed once per slice (default auto: qkv,proj for ViT encoders; none, with the decoder, "
        "for TinyViT ones such as the default)",
    )
    parser.add_argument("--include-decoder", action="store_true", help="also adapt the decoder")
    parser.add_argument(
        "--validate-with",
        choices=("auto", "box", "click", "both"),
        default="auto",
        help="prompt that picks the best epoch: exact box, one interior click (answered as segment "
        "answers it: refined with its best mask's box), or their mean "
        "(default auto: box for ViT encoders, both for TinyViT ones)",
    )
    parser.add_argument(
        "--decoder-targets",
        default="auto",
        help="with --include-decoder: mask-decoder transformer linears, comma-separated from "
        f"{','.join(DECODER_CHOICES)} (default auto: the attention, and for TinyViT encoders also "
        "heads = the output hypernetworks and IoU head, which turn a click's tokens into a mask)",
    )
    add_optimisation_arguments(parser, epochs=20, batch_size=4, lr=1e-3, patience=4)
    parser.add_argument("--name", help="adapter name (default: <modality>_adapter)")
    parser.add_argument("--out", required=True, metavar="FOLDER", help="adapter folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--install", action="store_true", help="also install into the library")
    parser.add_argument("--library", help="adapter library folder for --install")
    parser.add_argument("--replace", action="store_true", help="--install over an adapter")
    parser.add_argument(
        "--source-info",
        metavar="JSON",
        help="JSON file holding an object stored in the adapter's training_data (where the slices "
        "came from; its 'source' replaces the data paths); MiniSAMTrain passes the volume, "
        "segments and annotated slices",
    )
    parser.add_argument(
        "--progress-json",
        action="store_true",
        help="machine-readable progress instead of the bar: one JSON object per line on stdout "
        "(events start, phase, step, validation, then result or error; the summary goes to stderr)",
    )
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    check_common(args)
    if args.rank < 1:
        raise InputError(f"--rank must be >= 1, not {args.rank}")
    if args.alpha is not None and not args.alpha > 0:
        raise InputError(f"--alpha must be > 0, not {args.alpha}")
    if not 0.0 <= args.dropout < 1.0:
        raise InputError(f"--dropout must be in [0, 1), not {args.dropout}")
    _check_layers_and_quant(args)
    training_device(args.device)
    if args.method == "adalora-qat":
        from minisam.training.adapter_trainer import check_quant

        if not check_quant(args.qat_scheme).groups:
            raise InputError(f"--qat-scheme {args.qat_scheme!r} quantizes nothing (e.g. int8:attn)")
    if args.qat_epochs is not None and args.qat_epochs < 1:
        raise InputError(f"--qat-epochs must be >= 1, not {args.qat_epochs}")
    from minisam.adapters.lora import check_adapter_name

    family = family_for_dicom(args.modality)
    if family is None:
        raise InputError(f"--modality {args.modality!r} is not a known modality (US, CT, MR, ...)")
    check_adapter_name(args.name or f"{family.lower()}_adapter")
    out = Path(args.out)
    if not out.parent.is_dir():  # found before training: the resume file is written beside --out
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    refuse_existing(out, args.overwrite, args.resume)
    refuse_clobbering(args, out)
    if args.resume:
        _check_resumable(args)
    args.source_fields = _source_info(args.source_info)


def _check_layers_and_quant(args: argparse.Namespace) -> None:
    """The layer and precision options that are not ``auto`` (those are resolved with the model)."""
    from minisam.training.adapter_trainer import check_quant

    if args.targets != AUTO_RECIPE:
        encoder_targets(args)
    if args.decoder_targets != AUTO_RECIPE:
        target_names(args.decoder_targets, DECODER_CHOICES, "--decoder-targets")
    if args.quant != AUTO_RECIPE:
        check_quant(args.quant)


def _source_info(path: str | None) -> dict:
    """The object of ``--source-info`` (empty without it)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--source-info {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(
            f"--source-info {path}: must hold a JSON object, not {type(data).__name__}"
        )
    return data


def _check_resumable(args: argparse.Namespace) -> None:
    """--resume needs what a cancelled run left next to --out (OUT.resume.pt, adalora-qat: more)."""
    out = Path(args.out)
    if args.method == "adalora-qat":
        from minisam.training.qat import QatFiles

        QatFiles.next_to(out).check_resumable()
    elif not state_file(out).is_file():
        raise InputError(f"--resume: no resume file {state_file(out)} (nothing to continue)")


def state_file(out: Path) -> Path:
    """The resume file of a LoRA / AdaLoRA run writing ``out``."""
    return out.with_name(out.name + ".resume.pt")


def target_names(text: str, choices: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """The comma-separated layer names of ``flag``, each one of ``choices``."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise InputError(
            f"{flag} {text!r}: {'unknown layer ' + repr(unknown[0]) if unknown else 'no layer'}; "
            f"choose from {','.join(choices)}"
        )
    return names


def encoder_targets(args: argparse.Namespace) -> tuple[str, ...]:
    """``--targets`` as layer names; "none" (no encoder layer) only with ``--include-decoder``."""
    if args.targets.strip().lower() == "none":
        if not args.include_decoder:
            raise InputError("--targets none adapts nothing unless --include-decoder is given")
        return ()
    return target_names(args.targets, ENCODER_CHOICES, "--targets")


def run(args: argparse.Namespace) -> int:
    lines = JsonLines() if args.progress_json else None
    if lines is None:
        return _train(args, None)
    try:
        return _train(args, lines)
    except MiniSAMError as exc:
        lines.emit("error", message=str(exc))
        raise
    except KeyboardInterrupt:
        lines.emit("error", message="interrupted")
        raise
    except Exception as exc:  # a bug: one line for the caller, the traceback on stderr
        text = str(exc).strip().splitlines()
        lines.emit("error", message=f"{type(exc).__name__}: {text[0] if text else 'no message'}")
        raise


def _train(args: argparse.Namespace, lines: JsonLines | None) -> int:
    """The command; with ``lines``, progress and the outcome as JSON events, the summary on stderr."""

    def phase(name: str) -> None:
        if lines is not None:
            lines.emit("phase", phase=name)

    def say(text: str) -> None:
        print(text, file=sys.stderr if lines is not None else sys.stdout)

    _check_args(args)
    from minisam.adapters import AdapterLibrary, save_adapter
    from minisam.adapters.metadata import adapter_folder_size
    from minisam.model_loader import load_model
    from minisam.training.adapter_recipe import resolve_auto
    from minisam.training.adapter_trainer import AdapterTrainSettings, adapter_spec, train_adapter

    family = family_for_dicom(args.modality)
    name = args.name or f"{family.lower()}_adapter"
    phase("reading data")
    samples, source = load_samples(args, preset_for_family(family) or AUTO)
    train, val = split_cases(samples, args.max_slices, args.val_fraction, args.seed)
    out = Path(args.out)
    qat = args.method == "adalora-qat"
    steps = args.epochs * -(-len(train) // args.batch_size)
    total = steps + (args.qat_epochs or max(1, args.epochs // 2)) * steps // args.epochs * qat
    if lines is not None:
        lines.emit(
            "start", name=name, modality=family, total_steps=total, train_slices=len(train),
            val_slices=len(val), train_cases=len({s.case for s in train}),
            val_cases=sorted({Path(s.case).name for s in val}),
        )  # fmt: skip
    phase("loading model")
    loaded = load_model(args.model)
    loaded.sam.to(training_device(args.device))  # quantization and training happen where it is
    chosen = resolve_auto(args, loaded.config.family)
    _check_layers_and_quant(args)
    if chosen and not args.quiet:
        say(f"recipe for the {loaded.config.family} encoder of {args.model}: {' '.join(chosen)}")
    settings = settings_from_args(AdapterTrainSettings, args, validation_prompt=args.validate_with)
    spec = adapter_spec(
        args.method,
        args.rank,
        steps,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=encoder_targets(args),
        include_decoder=args.include_decoder,
        decoder_target_modules=target_names(
            args.decoder_targets, DECODER_CHOICES, "--decoder-targets"
        ),
    )
    phase("training")
    with training_progress(total, "train-adapter", not args.quiet, lines) as progress:
        with memory_hint(args.batch_size):
            if qat:
                from minisam.training.qat import QatFiles, train_adapter_qat

                model, report, _ = train_adapter_qat(
                    loaded, train, val, spec, family, settings, args.qat_scheme, args.qat_epochs,
                    progress, name, files=QatFiles.next_to(out), resume=args.resume,
                )  # fmt: skip
            else:
                model, report = train_adapter(
                    loaded, train, val, spec, settings, args.quant, progress, name,
                    state_file=state_file(out),
                    resume_from=state_file(out) if args.resume else None,
                )  # fmt: skip
    metadata = {
        "name": name,
        "modality": family,
        "base_hash": report.base_hash,
        "base_model": args.model,
        "training_data": {
            "source": source,
            **args.source_fields,
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
    phase("saving")
    folder = save_adapter(model, name, out, metadata)
    stopped = " (stopped early: --resume continues)" if report.cancelled else ""
    say(
        f"adapter {name} -> {folder} ({adapter_folder_size(folder) / 1e6:.2f} MB, "
        f"{report.trainable_params} params): val Dice {report.zero_shot_val_dice:.3f} zero-shot "
        f"-> {report.best_val_dice:.3f} (epoch {report.best_epoch}, {report.seconds:.0f} s){stopped}"
    )
    if qat:
        extra = report.extra
        say(
            f"AdaLoRA-QAT ({args.qat_scheme}): val Dice fp32 stage 1 {extra['stage1_val_dice']:.3f}, "
            f"quantized without QAT {extra.get('ptq_val_dice', float('nan')):.3f}, with QAT "
            f"{report.best_val_dice:.3f}; use it with --quant {report.quant}"
        )
    installed = None
    if args.install:
        installed = AdapterLibrary(args.library).install(folder, replace=args.replace).path
        say(f"installed {name} into {installed}")
    if lines is not None:
        lines.emit(
            "result", name=name, path=folder, installed=installed, modality=family,
            val_dice=report.best_val_dice, zero_shot_val_dice=report.zero_shot_val_dice,
            best_epoch=report.best_epoch, epochs_run=len(report.history),
            trainable_params=report.trainable_params, seconds=report.seconds, quant=report.quant,
            finished=not report.cancelled,
        )  # fmt: skip
    return 0
