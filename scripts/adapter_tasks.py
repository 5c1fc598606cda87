"""Train modality adapters with ``minisam train-adapter`` and score them by box and by one click.

    OMP_NUM_THREADS=2 python scripts/adapter_tasks.py --data ../shared/data --work /tmp/tasks \\
        --task brats --config lora --config qlora --config adalora-qat

Tasks (train and evaluation subjects disjoint):

- ``brats``: whole tumour on FLAIR, BraTS 2015 (CC BY-NC-SA 3.0, never in the shipped default's
  training, so a task it has not seen; an adapter made from it is not shipped). train-adapter gets
  the four train/ and validation/ patients with ``--max-slices 50``; the two test/ patients score
  (every slice with at least 100 tumour pixels).
- ``us_hc18``: HC18 fetal head ultrasound; 50 subjects train, the 20 subjects of
  docs/eval/us_hc18.csv score.
- ``xray_cxr``: Montgomery chest X-ray lungs; the training split of the default recipe trains (at
  most ``--max-slices``), docs/eval/cxr_heldout.csv scores (both lungs: one mask per image).

Configurations (``--config``, repeatable; all decoder-only: LoRA on the mask decoder's transformer
trained on the frozen encoder's embeddings, computed once per slice, ``--targets none
--include-decoder``): ``lora`` on the fp32 base (the default), ``lora-heads`` the same plus
the decoder's output heads (hypernetwork MLPs and IoU head, ``--decoder-targets ...,heads``),
``lora-int8`` / ``qlora`` on the INT8 / NF4 base, ``adalora-qat`` = AdaLoRA then its INT8
quantization-aware stage. Each picks its best epoch by the mean of box and one-click validation Dice
and trains with box and click sessions (2 corrective clicks).

Scores: Dice at model-input resolution, exact bounding box (one mask) and one positive click at the
most interior pixel (SAM's best-rated of three masks answered again with its own box: what a user
gets; before 2026-12-04 the best-rated mask as it was), for the base model at
fp32 and at each precision an adapter trained on, and for each adapter on that precision and on the
fp32 base (``minisam segment --adapter`` applies it to the fp32 default unless ``--quant`` says
otherwise). Prints one table, writes ``--work``/TASK_results.json; ``--ship FOLDER`` re-saves the
first configuration's adapter there when, on the fp32 base, it improves both box and one-click Dice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from minisam.adapters import load_adapter
from minisam.adapters.adapter_io import ship_adapter
from minisam.adapters.metadata import read_metadata
from minisam.model_loader import load_model
from minisam.quantization import quantize_model
from minisam.training.adapter_recipe import DECODER_ATTENTION, RECIPES
from minisam.training.base_trainer import validation_dice
from minisam.training.default_recipe import (
    LICENCES,
    evaluation_images,
    hc18_subject,
    montgomery_split,
)
from minisam.training.embedding_store import encode
from minisam.training.manifest import (
    read_training_manifest,
    samples_from_manifest,
    write_manifest,
)
from minisam.training.model_inputs import to_model_inputs

HEADS = RECIPES["tiny_vit"].decoder_targets  # the attention and the output heads
CONFIGS = {
    "lora": ["--method", "lora", "--quant", "fp32", "--rank", "8", "--decoder-targets", DECODER_ATTENTION],
    "lora-heads": ["--method", "lora", "--quant", "fp32", "--rank", "8", "--decoder-targets", HEADS],
    "lora-int8": ["--method", "lora", "--quant", "int8", "--rank", "8", "--decoder-targets", DECODER_ATTENTION],
    "qlora": ["--method", "lora", "--quant", "nf4", "--rank", "8", "--decoder-targets", DECODER_ATTENTION],
    "adalora-qat": ["--method", "adalora-qat", "--rank", "8", "--decoder-targets", DECODER_ATTENTION],
}  # fmt: skip
COMMON = [
    "--targets", "none", "--include-decoder", "--validate-with", "both",
    "--correction-clicks", "2", "--lr", "1e-3", "--patience", "5", "--quiet",
]  # fmt: skip
EVAL_MIN_AREA = 100


EVAL = Path(__file__).resolve().parents[1] / "docs" / "eval"


def task_manifests(task: str, data: Path, work: Path) -> tuple[Path, Path, dict]:
    """(training manifest, evaluation manifest, training-data record) for ``task``; us_hc18 and
    xray_cxr score on the committed evaluation manifests of docs/eval."""
    data = data.resolve()
    if task == "brats":
        root = data / "brats2015_deepmedic_examples"

        def rows(split: str) -> list[dict]:
            return [
                {
                    "image": str(p / "Flair_subtrMeanDivStd.nii.gz"),
                    "label": str(p / "OTMultiClass.nii.gz"),
                    "modality": "mr",
                }
                for p in sorted((root / split).iterdir())
            ]

        train = rows("train") + rows("validation")
        held = write_manifest(work / f"{task}_eval.csv", rows("test"))
        record = {"dataset": "BraTS 2015 FLAIR whole tumour", "licence": "CC BY-NC-SA 3.0 CH"}
    elif task == "us_hc18":
        held = EVAL / "us_hc18.csv"
        held_subjects = {hc18_subject(p) for p in evaluation_images([held])}
        root = data / "hc18_fetal_head_us"
        first_images = {}  # one image per subject, the first in name order
        for image in sorted((root / "images").glob("*.png")):
            if hc18_subject(image) not in held_subjects:
                first_images.setdefault(hc18_subject(image), image)
        train = [
            {
                "image": str(i),
                "label": str(root / "masks_filled" / f"{i.stem}_mask.png"),
                "modality": "us",
            }
            for i in list(first_images.values())[:50]
        ]
        record = {
            "dataset": "HC18 fetal head ultrasound",
            "licence": LICENCES["hc18_fetal_head_us"],
        }
    elif task == "xray_cxr":
        held = EVAL / "cxr_heldout.csv"
        held_images = evaluation_images([held])
        cxr_train, _ = montgomery_split(data)
        train = [
            {"image": str(i), "label": str(m), "modality": "xray"}
            for i, m in cxr_train
            if i.resolve() not in held_images
        ]
        record = {
            "dataset": "Montgomery County chest X-ray lungs",
            "licence": LICENCES["cxr_montgomery"],
        }
    else:
        raise SystemExit(f"--task {task}: unknown (brats, us_hc18, xray_cxr)")
    record["source"] = f"{task}_train.csv ({len(train)} rows; scripts/adapter_tasks.py)"
    return write_manifest(work / f"{task}_train.csv", train), held, record


def scores(loaded, data, embeddings=None) -> dict[str, float]:
    """Box and one-click Dice of ``loaded`` on ``data`` (one sample per slice: each encoded once;
    ``embeddings``: the slices' embeddings by this encoder, when already computed)."""
    if embeddings is None:
        embeddings = encode(loaded.sam, data.images)
    return {
        prompt: validation_dice(
            loaded.sam, data, loaded.config, prompt=prompt, embeddings=embeddings
        )
        for prompt in ("box", "click")
    }


def model_state(model: str, quant: str, adapter: Path | None = None):
    """``model`` with its encoder at precision ``quant`` and, optionally, an adapter applied."""
    loaded = load_model(model)
    base_hash = loaded.base_hash()
    if quant != "fp32":
        quantize_model(loaded, quant, cpu_strategy="dequantize")
    if adapter is not None:
        load_adapter(loaded.sam, adapter, base_hash)
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--task", required=True, choices=("brats", "us_hc18", "xray_cxr"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--config", action="append", choices=tuple(CONFIGS))
    parser.add_argument("--max-slices", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--box-probability", default="0.6", help="train-adapter's share of box-started sessions"
    )
    parser.add_argument("--ship", type=Path, help="ship the first configuration's adapter here")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score the adapters a previous run left in --work instead of training them again",
    )
    args = parser.parse_args()
    configs = args.config or ["lora"]
    args.work.mkdir(parents=True, exist_ok=True)
    train_csv, eval_csv, record = task_manifests(args.task, args.data, args.work)

    base = load_model(args.model)
    evaluation = to_model_inputs(
        samples_from_manifest(read_training_manifest(eval_csv), min_area=EVAL_MIN_AREA), base.config
    )
    # Every configuration is decoder-only: one encoding per base precision serves base and adapters.
    encoded = {"fp32": encode(base.sam, evaluation.images)}
    results = {"base (fp32)": {**scores(base, evaluation, encoded["fp32"]), "minutes": 0.0}}
    trained = {}
    for number, name in enumerate(configs):
        adapter = args.task if number == 0 else f"{args.task}_{name}"  # the first one may ship
        out = args.work / adapter
        if args.reuse and out.is_dir():
            print(f"reusing {out}", flush=True)
            trained[name] = (out, float("nan"))
            continue
        command = [
            sys.executable, "-m", "minisam", "train-adapter", "--manifest", str(train_csv),
            "--modality", args.task.split("_")[0].upper() if args.task != "brats" else "MR",
            "--name", adapter, "--model", args.model, "--out", str(out),
            "--overwrite", "--max-slices", str(args.max_slices), "--epochs", str(args.epochs),
            "--box-probability", args.box_probability, *CONFIGS[name], *COMMON,
        ]  # fmt: skip
        print(" ".join(command[2:]), flush=True)
        started = time.monotonic()
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"train-adapter failed for {name}")
        trained[name] = (out, (time.monotonic() - started) / 60)
    for name, (out, minutes) in trained.items():
        meta = read_metadata(out)
        assert not meta.spec.get("target_modules"), f"{out}: adapts the encoder"
        quant = meta.training_data.get("quant") or "fp32"
        if f"base ({quant})" not in results:
            quantized = model_state(args.model, quant)
            encoded[quant] = encode(quantized.sam, evaluation.images)
            results[f"base ({quant})"] = {
                **scores(quantized, evaluation, encoded[quant]),
                "minutes": 0.0,
            }
        for on in dict.fromkeys((quant, "fp32")):  # where it was trained, and on the default's fp32
            results[f"{name} on {on} base"] = {
                **scores(model_state(args.model, on, out), evaluation, encoded[on]),
                "minutes": minutes,
                "trainable_params": meta.trainable_params,
                "folder": str(out),
            }
    print(f"\n{args.task}: {len(evaluation)} evaluation slices, model {args.model}")
    print("| model | box Dice | one-click Dice | train minutes | trainable params |")
    print("|---|---|---|---|---|")
    for label, row in results.items():
        print(
            f"| {label} | {row['box']:.3f} | {row['click']:.3f} | {row['minutes']:.1f} | "
            f"{row.get('trainable_params', '')} |"
        )
    (args.work / f"{args.task}_results.json").write_text(json.dumps(results, indent=1))
    if args.ship:
        first = results[f"{configs[0]} on fp32 base"]
        base_row = results["base (fp32)"]
        if first["box"] > base_row["box"] and first["click"] > base_row["click"]:
            ship_adapter(
                Path(first["folder"]),
                args.ship,
                args.model,
                training_data=record,
                metrics={
                    "heldout_eval": {
                        k: {"box": round(v["box"], 4), "click": round(v["click"], 4)}
                        for k, v in results.items()
                    }
                },
            )
            print(f"shipped to {args.ship}")
        else:
            print("not shipped: the adapter does not beat the base on both prompts")


if __name__ == "__main__":
    main()
