"""Few-shot ultrasound adapter: HC18 fetal head, NF4 QLoRA on the default model, zero-shot vs adapter.

    OMP_NUM_THREADS=2 python scripts/train_us_adapter.py --data ../shared/data --work /tmp/us_adapter

Every HC18 image here is a distinct subject (3-digit prefix). With ``--seed`` the subjects are
shuffled: the first ``--eval-cases`` form the evaluation set, the next ``--shots`` the few-shot
training manifest (``minisam train-adapter`` holds back ``--val-fraction`` of them for early
stopping, so at most ``--shots`` labelled slices are used in all). Dice is the exact-box Dice at
the image's own resolution, as in scripts/evaluate_default.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from minisam.adapters import load_adapter
from minisam.adapters.adapter_io import ship_adapter
from minisam.adapters.metadata import adapter_folder_size, read_metadata
from minisam.engine import SamEngine
from minisam.imageio import read_image
from minisam.intensity import normalize_intensity, to_rgb
from minisam.metrics import dice
from minisam.model_loader import load_model
from minisam.prompts import Prompt, mask_bounding_box
from minisam.quantization import quantize_model
from minisam.training.manifest import write_manifest
from minisam.training.slice_samples import read_mask_2d

LICENCE = (
    "HC18 (van den Heuvel et al., PLoS ONE 2018, Zenodo 10.5281/zenodo.1322001), CC BY 4.0 per a "
    "third-party dataset card (see shared/data/hc18_fetal_head_us/SOURCE.md)"
)


def hc18_split(root: Path, seed: int, eval_cases: int, shots: int) -> tuple[list, list]:
    """(train, eval) lists of (image, mask) with disjoint subjects, chosen with ``seed``."""
    images = sorted((root / "images").glob("*.png"))
    subjects: dict[str, Path] = {}
    for image in images:  # one image per subject (the first in name order)
        subjects.setdefault(image.name[:3], image)
    keys = sorted(subjects)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    pairs = [
        (subjects[k], root / "masks_filled" / subjects[k].name.replace(".png", "_mask.png"))
        for k in order
    ]
    return pairs[eval_cases : eval_cases + shots], pairs[:eval_cases]


def box_dice(engine: SamEngine, pairs: list[tuple[Path, Path]]) -> list[float]:
    """Exact-bounding-box Dice per image at the image's resolution."""
    scores = []
    for image, mask in pairs:
        truth = read_mask_2d(mask)
        embedding = engine.embed(to_rgb(normalize_intensity(read_image(image).array, "us")))
        prediction = engine.predict(embedding, Prompt(box=mask_bounding_box(truth)))
        scores.append(dice(prediction.mask, truth))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/us_adapter"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-cases", type=int, default=40)
    parser.add_argument("--shots", type=int, default=50)
    parser.add_argument("--include-decoder", action="store_true")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--model", default="default", help="base model (name or checkpoint file)")
    parser.add_argument("--method", default="lora", choices=("lora", "adalora", "adalora-qat"))
    parser.add_argument("--name", default="us_hc18")
    parser.add_argument(
        "--base-name", default="default", help="the base model's name in the shipped metadata"
    )
    parser.add_argument("--ship", type=Path, help="copy the adapter here if it improves Dice")
    args = parser.parse_args()
    root = args.data.resolve() / "hc18_fetal_head_us"  # absolute: the manifests live elsewhere
    train, evaluation = hc18_split(root, args.seed, args.eval_cases, args.shots)
    manifest = args.work / "hc18_fewshot.csv"
    rows = [{"image": str(i), "label": str(m), "modality": "us"} for i, m in train]
    write_manifest(manifest, rows)
    write_manifest(
        args.work / "hc18_eval.csv",
        [{"image": str(i), "label": str(m), "modality": "us"} for i, m in evaluation],
    )
    out = args.work / args.name
    command = [
        "train-adapter", "--manifest", str(manifest), "--modality", "US", "--name", args.name,
        "--model", args.model, "--method", args.method, "--overwrite",
        "--quant", "nf4", "--rank", str(args.rank), "--epochs", str(args.epochs),
        "--lr", str(args.lr), "--seed", str(args.seed), "--out", str(out), "--quiet",
        *(["--include-decoder"] if args.include_decoder else []),
    ]  # fmt: skip
    print("minisam " + " ".join(command))
    started = time.monotonic()
    if subprocess.run([sys.executable, "-m", "minisam", *command]).returncode != 0:
        raise SystemExit("training failed")
    minutes = (time.monotonic() - started) / 60

    zero = load_model(args.model)
    zero_scores = box_dice(SamEngine(zero.sam, zero.config), evaluation)
    results = {"zero-shot (fp32 base)": zero_scores}
    trained_on = read_metadata(out).training_data["quant"]
    for quant in dict.fromkeys((trained_on, "fp32")):
        loaded = load_model(args.model)
        base_hash = loaded.base_hash()
        if quant != "fp32":
            quantize_model(loaded, quant, cpu_strategy="dequantize")
        load_adapter(loaded.sam, out, base_hash)
        results[f"adapter on {quant} base"] = box_dice(
            SamEngine(loaded.sam, loaded.config), evaluation
        )
    meta = read_metadata(out)
    print(f"\nHC18 eval: {len(evaluation)} images of subjects disjoint from the {len(train)} shots")
    print("| model | n | mean Dice | median | min | 1 - Dice |\n|---|---|---|---|---|---|")
    for label, scores in results.items():
        print(
            f"| {label} | {len(scores)} | {np.mean(scores):.3f} | {np.median(scores):.3f} | "
            f"{np.min(scores):.3f} | {1 - np.mean(scores):.3f} |"
        )
    summary = {
        "train_minutes": round(minutes, 2),
        "trainable_params": meta.trainable_params,
        "adapter_bytes": adapter_folder_size(out),
        "metadata_metrics": {k: v for k, v in meta.metrics.items() if k != "history"},
        "eval_subjects": [i.name[:3] for i, _ in evaluation],
        "mean_dice": {k: round(float(np.mean(v)), 4) for k, v in results.items()},
    }
    print(json.dumps(summary, indent=1))
    (args.work / "results.json").write_text(json.dumps(summary, indent=1))
    improved = np.mean(results[f"adapter on {trained_on} base"]) > np.mean(zero_scores)
    if args.ship and improved:
        _ship(out, args.ship, summary, [i.name[:3] for i, _ in evaluation], args.base_name)
        print(f"shipped to {args.ship}")


def _ship(out: Path, target: Path, summary: dict, eval_subjects: list[str], base_name: str) -> None:
    """Re-save the adapter folder atomically with the licence and held-out results recorded."""
    ship_adapter(
        out,
        target,
        base_name,
        training_data={
            "dataset": "HC18 fetal head ultrasound",
            "licence": LICENCE,
            "source": "hc18_fewshot.csv (shared/data/hc18_fetal_head_us)",
        },
        metrics={
            "heldout_eval": {"mean_dice": summary["mean_dice"], "eval_subjects": eval_subjects}
        },
    )


if __name__ == "__main__":
    main()
