"""Time the adapter recipes on one device, side by side: the shipped decoder LoRA (fp32 base, frozen
encoder embedded once), QLoRA (LoRA on encoder attention and decoder, NF4 base) and AdaLoRA-QAT
(INT8 attention in stage 2), on the same 2D slices, through the training API ``train-adapter`` uses.

    python scripts/adapter_training_times.py --manifest hc18_50.csv --device cuda --out cuda.json

The manifest (``image,label[,case]``, paths relative to it) lists 8-bit PNG slices; they are read
with Pillow and normalised with the ultrasound preset, so the script also runs where SimpleITK is not
installed (it ran so on the GPU machine of docs/bench/gpu.md). The first fifth of the rows validate
(mean of box and refined one-click Dice, as ``--validate-with both``); the rest train. Prints one JSON
line per recipe (seconds, zero-shot and best validation Dice, trainable parameters, peak VRAM on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minisam.intensity import normalize_intensity, to_rgb
from minisam.model_loader import load_model
from minisam.training.adapter_recipe import DECODER_ATTENTION
from minisam.training.adapter_trainer import AdapterTrainSettings, adapter_spec, train_adapter
from minisam.training.qat import train_adapter_qat
from minisam.training.slice_samples import SliceSample

RECIPES = ("lora-decoder", "qlora-nf4", "adalora-qat")
DECODER_TARGETS = tuple(DECODER_ATTENTION.split(","))  # the shipped adapters' layers


def read_slices(manifest: Path, count: int) -> list[SliceSample]:
    """The first ``count`` rows of ``manifest`` as training samples (grey PNGs, masks > 127)."""
    samples = []
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    for row in rows:
        grey = np.asarray(Image.open(manifest.parent / row["image"]).convert("L"))
        mask = np.asarray(Image.open(manifest.parent / row["label"]).convert("L")) > 127
        rgb = to_rgb(normalize_intensity(grey, "us")).astype(np.uint8)
        samples.append(SliceSample(rgb, mask, row.get("case") or row["image"], "us", manifest.stem))
    return samples


def time_recipe(
    recipe: str, base, train: list, val: list, epochs: int, device: torch.device
) -> dict:
    """Train ``recipe`` on a copy of ``base``; its timing and validation row."""
    loaded = copy.deepcopy(base)
    steps = epochs * -(-len(train) // AdapterTrainSettings.batch_size)
    settings = AdapterTrainSettings(epochs=epochs, patience=None, validation_prompt="both")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    decoder_only = dict(
        target_modules=(), include_decoder=True, decoder_target_modules=DECODER_TARGETS
    )
    if recipe == "lora-decoder":
        spec = adapter_spec("lora", 8, steps, **decoder_only)
        _, report = train_adapter(loaded, train, val, spec, settings, "fp32")
    elif recipe == "qlora-nf4":
        spec = adapter_spec(
            "lora", 8, steps, include_decoder=True, decoder_target_modules=DECODER_TARGETS
        )
        _, report = train_adapter(loaded, train, val, spec, settings, "nf4")
    else:
        spec = adapter_spec("adalora-qat", 8, steps, **decoder_only)
        _, report, _ = train_adapter_qat(loaded, train, val, spec, "US", settings, "int8:attn")
    row = {
        "recipe": recipe,
        "device": str(device),
        "train": len(train),
        "val": len(val),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 1),
        "zero_shot_val": round(report.zero_shot_val_dice, 4),
        "best_val": round(report.best_val_dice, 4),
        "best_epoch": report.best_epoch,
        "trainable": report.trainable_params,
        "quant": report.quant,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        row["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 1e6)
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    samples = read_slices(args.manifest, args.slices)
    held = max(1, len(samples) // 5)
    val, train = samples[:held], samples[held:]
    base = load_model("default")
    base.sam.to(device)
    rows = []
    for recipe in args.recipes:
        rows.append(time_recipe(recipe, base, train, val, args.epochs, device))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
