"""Teach LiteMedSAM clicks: its prompt path trained on cached embeddings (issue: a real default).

    OMP_NUM_THREADS=2 python scripts/train_click_decoder.py --data ../shared/data --work /tmp/clicks \\
        --method full --learning-rate 3e-4 --epochs 3 --max-per-dataset 160 \\
        --out /tmp/clicks/litemedsam_clicks.safetensors

(the shipped ``litemedsam-clicks``' prompt path, 27 minutes on the 2-core CPU after 20 minutes of embedding;
add ``--method lora --learning-rate 1e-3`` to compare a decoder LoRA in the same run). Then its IoU head:

    OMP_NUM_THREADS=2 python scripts/train_click_decoder.py --data ../shared/data --work /tmp/clicks \
        --init /tmp/clicks/litemedsam_clicks.safetensors --method iou-head --max-per-dataset 160 \
        --out minisam/pretrained/litemedsam_clicks.safetensors

(``iou-head``: only the head that ranks a lone click's three candidates learns, on decoder outputs
computed once, :mod:`minisam.training.iou_head_tuning`; the masks stay exactly as they were).

LiteMedSAM's image encoder is frozen: every training slice (the licence-compatible sets of
:func:`minisam.training.default_recipe.click_tuning_samples`, never an image of the evaluation
manifests) is embedded once into ``--work``/embeddings, then each ``--method`` trains the prompt path
from LiteMedSAM's own weights. The one with the best validation mean of box and one-click Dice is
written to ``--out`` (a MiniSAM safetensors checkpoint with its card) and the reports to
``--work``/reports.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minisam.atomic import atomic_output
from minisam.checkpoints import save_checkpoint
from minisam.model_loader import load_model
from minisam.training.default_recipe import LICENCES, click_tuning_samples, evaluation_images
from minisam.training.embedding_store import EmbeddingStore, embeddings_of
from minisam.training.iou_head_tuning import IouHeadSettings, head_samples, tune_iou_head
from minisam.training.model_inputs import to_model_inputs
from minisam.training.prompt_tuning import PromptTuningSettings, tune_prompt_path

EVALUATION_MANIFESTS = ("cxr_heldout", "us_hc18", "volumes", "compact")


def capped(samples: list, limit: int, seed: int = 0) -> list:
    """At most ``limit`` samples of each dataset (a seeded random choice), in their order."""
    rng = np.random.default_rng(seed)
    keep = set()
    for dataset in sorted({s.dataset for s in samples}):
        members = [i for i, s in enumerate(samples) if s.dataset == dataset]
        if len(members) > limit:
            members = rng.choice(members, limit, replace=False).tolist()
        keep.update(members)
    return [s for i, s in enumerate(samples) if i in keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--work", type=Path, required=True, help="embeddings and reports")
    parser.add_argument("--out", type=Path, help="checkpoint of the best method")
    parser.add_argument(
        "--init",
        default="litemedsam",
        help="model to start from (a name or path; its encoder must be LiteMedSAM's): "
        "litemedsam-clicks continues the shipped training",
    )
    parser.add_argument("--method", action="append", choices=("full", "lora", "iou-head"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--learning-rate", type=float, action="append")
    parser.add_argument("--correction-clicks", type=int, default=2)
    parser.add_argument(
        "--max-per-dataset", type=int, help="at most this many training samples per dataset"
    )
    parser.add_argument(
        "--box-anchor",
        type=float,
        default=0.0,
        help="pull box masks toward --init's with this weight while clicks are learned (0: off)",
    )
    args = parser.parse_args()
    methods = args.method or ["full"]
    rates = args.learning_rate or [None] * len(methods)
    if len(rates) != len(methods):
        parser.error("give one --learning-rate per --method (or none)")
    if "iou-head" in methods and len(methods) > 1:
        # its score is one-click Dice alone (the masks cannot change), the others' the mean of box
        # and one click: a run would compare unlike numbers
        parser.error("--method iou-head runs alone (it tunes the ranking of a finished --init)")

    manifests = [Path("docs/eval") / f"{name}.csv" for name in EVALUATION_MANIFESTS]
    train, val = click_tuning_samples(args.data, evaluation_images(manifests))
    if args.max_per_dataset:
        train = capped(train, args.max_per_dataset)
    base = load_model("litemedsam")
    train_inputs = to_model_inputs(train, base.config)
    val_inputs = to_model_inputs(val, base.config)
    store = EmbeddingStore(base, args.work / "embeddings")
    with tqdm(desc="embed", unit="image") as bar:

        def embedded(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        train_embeddings = embeddings_of(store, train_inputs, embedded)
        val_embeddings = embeddings_of(store, val_inputs, embedded)

    reports, best = {}, None
    for method, rate in zip(methods, rates, strict=True):
        loaded = load_model(args.init)
        if method == "iou-head":
            started = time.monotonic()
            head_settings = IouHeadSettings()
            if rate is not None:
                head_settings.learning_rate = rate
            model, report = _iou_head(
                loaded, head_settings, train_inputs, val_inputs, train_embeddings, val_embeddings
            )
            reports[method] = {**asdict(report), "wall_minutes": (time.monotonic() - started) / 60}
            print(
                json.dumps({k: v for k, v in reports[method].items() if k != "history"}, indent=1)
            )
            # The masks did not change, so the box half of the score is the starting model's.
            score = report.click_dice
            if best is None or score > best[0]:
                best = (score, method, model, loaded.config, head_settings)
            continue
        settings = PromptTuningSettings(
            method=method,
            epochs=args.epochs,
            max_minutes=args.max_minutes,
            correction_clicks=args.correction_clicks,
            box_anchor=args.box_anchor,
        )
        if rate is not None:
            settings.learning_rate = rate
        elif method == "lora":
            settings.learning_rate = 1e-3
        steps = args.epochs * -(-len(train_inputs) // settings.batch_size)
        started = time.monotonic()
        with tqdm(total=steps, desc=f"train {method}") as bar:

            def shown(info: dict, bar=bar, method=method) -> None:
                if "validation" in info:
                    row = info["validation"]
                    tqdm.write(f"{method} epoch {row['epoch']}: val {row['val_dice']:.4f}")
                else:
                    bar.update(1)
                    bar.set_postfix(loss=f"{info['loss']:.3f}")

            model, report = tune_prompt_path(
                loaded, train_inputs, val_inputs, train_embeddings, val_embeddings, settings, shown
            )
        reports[method] = {**asdict(report), "wall_minutes": (time.monotonic() - started) / 60}
        print(json.dumps({k: v for k, v in reports[method].items() if k != "history"}, indent=1))
        score = (report.box_dice + report.click_dice) / 2
        if best is None or score > best[0]:
            best = (score, method, model, loaded.config, settings)
    args.work.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.work / "reports.json") as tmp:
        tmp.write_text(json.dumps(reports, indent=1))
    if args.out and best is not None:
        _, method, model, config, settings = best
        card = {
            "name": "litemedsam-clicks",
            "derived_from": "litemedsam (lite_medsam.pth, Apache-2.0); image encoder unchanged",
            "started_from": args.init,
            "prompt_tuning": {"method": method, **asdict(settings)},
            "train_samples": len(train_inputs),
            "val_samples": len(val_inputs),
            "data_licences": LICENCES,
            "report": {k: v for k, v in reports[method].items() if k != "history"},
        }
        if method == "iou-head":  # the prompt path is the starting model's: keep its card
            card = {
                **(load_model(args.init).card or {}),
                "iou_head_tuning": {
                    "started_from": str(args.init),
                    **asdict(settings),
                    "train_samples": len(train_inputs),
                    "val_samples": len(val_inputs),
                    "report": card["report"],
                },
            }
        save_checkpoint(model, config, args.out, card)
        print(f"wrote {args.out} ({method})")


def _iou_head(loaded, settings, train_inputs, val_inputs, train_embeddings, val_embeddings):
    """Fit ``loaded``'s IoU head on decoder outputs computed once (see the module docstring)."""
    samples = {}
    for name, inputs, embeddings in (
        ("train", train_inputs, train_embeddings),
        ("val", val_inputs, val_embeddings),
    ):
        with tqdm(total=len(inputs), desc=f"decode {name}", unit="image") as bar:
            samples[name] = head_samples(
                loaded.sam, loaded.config, embeddings, inputs.masks, settings,
                lambda done, _total, bar=bar: bar.update(done - bar.n),
            )  # fmt: skip

    def shown(row: dict) -> None:
        tqdm.write(f"iou-head epoch {row['epoch']}: val click Dice {row['val_click_dice']:.4f}")

    report = tune_iou_head(loaded.sam, samples["train"], samples["val"], settings, shown)
    return loaded.sam, report


if __name__ == "__main__":
    main()
