"""Train the teacher of the embedded default: a 'small' SAM on the permissive data mix (no ultrasound).

    # v0: from scratch (its run stopped at the 50-minute budget and kept epoch 8)
    python scripts/train_default.py --data ../shared/data --out teacher_v0.safetensors
    # v1: v0 continued with mean padding, geometric augmentation and corrective clicks
    python scripts/train_default.py --data ../shared/data --init teacher_v0.safetensors \
        --name minisam-teacher-v1 --epochs 6 --lr 1e-4 --max-minutes 45 --out teacher_v1.safetensors

CPU (2 cores): about 50 and 25 minutes. With ``--init`` the checkpoint is only written when it
validates better than the starting weights. See Testing/data/models/README.md (MiniSAM v3, the
default until LiteMedSAM taught clicks replaced it).
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minisam.model_config import build_sam, preset
from minisam.model_loader import load_model
from minisam.training.base_trainer import TrainSettings, train_base
from minisam.training.default_recipe import LICENCES, default_samples
from minisam.training.model_inputs import to_model_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--arch", default="small")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-minutes", type=float, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init",
        type=Path,
        help="continue from this checkpoint (same --arch) instead of random weights",
    )
    parser.add_argument("--name", default="minisam-teacher-v0", help="the model card's name")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = preset(args.arch)
    train, val = default_samples(args.data)
    counts = {
        "train": collections.Counter(s.dataset for s in train),
        "validation": collections.Counter(s.dataset for s in val),
    }
    print(json.dumps(counts, indent=1))
    if args.init:
        loaded = load_model(str(args.init))
        if loaded.config != config:
            raise SystemExit(f"error: --init {args.init}: not a '{args.arch}' model")
        sam = loaded.sam
    else:
        sam = build_sam(config)
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        max_minutes=args.max_minutes,
    )
    card = {
        "name": args.name,
        "init": args.init.name if args.init else None,
        "arch": args.arch,
        "datasets": LICENCES,
        "samples": {k: dict(v) for k, v in counts.items()},
        "command": "python scripts/train_default.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v.name if isinstance(v, Path) else v}"
            for k, v in vars(args).items()
            if k not in ("data", "out", "name") and v is not None
        ),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    bar = tqdm(unit="step")

    def progress(event: dict) -> None:
        if "validation" in event:
            tqdm.write(json.dumps(event["validation"]))
        else:
            bar.total = event["steps"]
            bar.set_description(f"epoch {event['epoch']}")
            bar.n = event["step"] + 1
            bar.set_postfix(loss=f"{event['loss']:.3f}")
            bar.refresh()

    report = train_base(
        sam,
        config,
        to_model_inputs(train, config),
        to_model_inputs(val, config),
        args.out,
        settings,
        card=card,
        progress=progress,
        baseline=args.init is not None,
    )
    bar.close()
    print(
        f"best validation Dice {report.best_val_dice:.4f} at epoch {report.best_epoch}; "
        f"{report.seconds / 60:.1f} min; saved {args.out}"
    )


if __name__ == "__main__":
    main()
