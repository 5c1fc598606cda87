"""Box-prompt Dice of a model on held-out chest X-ray lungs and on (unseen) fetal-head ultrasound.

    python scripts/evaluate_default.py --model default --data ../shared/data

The numbers in minisam/pretrained/MODEL_CARD.md come from this script. `minisam evaluate` (issue #5) will
replace it with the full metric set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from minisam.engine import SamEngine
from minisam.imageio import read_image
from minisam.intensity import normalize_intensity, to_rgb
from minisam.metrics import dice
from minisam.model_loader import load_model
from minisam.prompts import Prompt, mask_bounding_box
from minisam.training.default_recipe import VALIDATION_CXR_EVERY
from minisam.training.slice_samples import read_mask_2d


def box_dice(engine: SamEngine, image: Path, truth: np.ndarray, modality: str) -> list[float]:
    """Dice of the exact-bounding-box prompt for each sizeable connected component of ``truth``."""
    embedding = engine.embed(to_rgb(normalize_intensity(read_image(image).array, modality)))
    components, count = ndimage.label(truth)
    scores = []
    for label in range(1, count + 1):
        part = components == label
        if part.sum() >= 1000:
            prediction = engine.predict(embedding, Prompt(box=mask_bounding_box(part)))
            scores.append(dice(prediction.mask, part))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--us-cases", type=int, default=40)
    args = parser.parse_args()
    loaded = load_model(args.model)
    engine = SamEngine(loaded.sam, loaded.config)

    cxr = args.data / "cxr_lung_montgomery_shenzhen"
    held_out = sorted((cxr / "images").glob("MCUCXR_*.png"))[::VALIDATION_CXR_EVERY]
    lungs = [
        s
        for p in held_out
        for s in box_dice(engine, p, read_mask_2d(cxr / "masks" / p.name), "xray")
    ]
    us = args.data / "hc18_fetal_head_us"
    heads = []
    for image in sorted((us / "images").glob("*.png"))[: args.us_cases]:
        truth = read_mask_2d(us / "masks_filled" / image.name.replace(".png", "_mask.png"))
        heads += box_dice(engine, image, truth, "us")
    print("| set | prompts | n | mean Dice | median | min |\n|---|---|---|---|---|---|")
    for name, scores in (
        ("CXR lungs, held-out Montgomery", lungs),
        ("HC18 fetal head US (unseen)", heads),
    ):
        print(
            f"| {name} | exact box per lung/head | {len(scores)} | {np.mean(scores):.3f} | "
            f"{np.median(scores):.3f} | {np.min(scores):.3f} |"
        )


if __name__ == "__main__":
    main()
