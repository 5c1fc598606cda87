"""Distil the click-tuned LiteMedSAM's encoder into a compact student (issue: a real default, step 2).

    OMP_NUM_THREADS=2 python scripts/distill_default_student.py --data ../shared/data \\
        --teacher /tmp/clicks/litemedsam_clicks.safetensors --work /tmp/clicks --max-minutes 30

The student keeps the teacher's (click-tuned) prompt encoder and mask decoder and learns the
teacher's embeddings, label-free, on the training images of
:func:`minisam.training.default_recipe.click_tuning_samples` plus every slice of the training
volumes (never an image of the evaluation manifests). Teacher embeddings come from the same store as
the click tuning (``--work``/embeddings), so the teacher only runs on images not embedded yet.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from minisam.model_loader import load_model
from minisam.training.default_recipe import (
    click_tuning_samples,
    evaluation_images,
    training_volumes,
)
from minisam.training.distill import DistillSettings, build_student, distill, student_config
from minisam.training.embedding_store import EmbeddingStore, unique_images
from minisam.training.model_inputs import to_model_inputs
from minisam.training.slice_samples import unlabelled_slices

EVALUATION_MANIFESTS = ("cxr_heldout", "us_hc18", "volumes", "compact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--teacher", required=True, help="the click-tuned LiteMedSAM checkpoint")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--student", default="tiny_vit", help="student encoder preset")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args()

    held_out = evaluation_images([Path("docs/eval") / f"{n}.csv" for n in EVALUATION_MANIFESTS])
    train, val = click_tuning_samples(args.data, held_out)
    unlabelled = [
        s
        for v in training_volumes(args.data)
        if v.image.resolve() not in held_out
        for s in unlabelled_slices(v.image, v.dataset, v.modality)
    ]
    teacher = load_model(args.teacher)
    config = student_config(teacher.config, args.student, teacher.config.image_size)
    student = build_student(teacher, config)
    images = train + unlabelled
    inputs = (to_model_inputs(images, teacher.config), to_model_inputs(images, config))
    settings = DistillSettings(
        epochs=args.epochs, batch_size=8, learning_rate=args.learning_rate,
        max_minutes=args.max_minutes, warmup_fraction=0.05,
    )  # fmt: skip
    distinct = len(unique_images(inputs[1]))
    out = args.work / f"student_{args.student}.safetensors"
    card = {
        "name": f"litemedsam-clicks-student-{args.student}",
        "teacher": str(args.teacher),
        "teacher_hash": teacher.base_hash(),
        "student": args.student,
        "encoder_params": sum(p.numel() for p in student.image_encoder.parameters()),
        "distinct_images": distinct,
        "val_slices": len(val),
    }
    started = time.monotonic()
    with tqdm(total=args.epochs * -(-distinct // settings.batch_size), desc="distill") as bar:

        def shown(info: dict) -> None:
            if "validation" in info:
                row = info["validation"]
                tqdm.write(f"epoch {row['epoch']}: val box Dice {row['val_dice']:.4f}")
            else:
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.4f}")

        report = distill(
            teacher, student, config, inputs, to_model_inputs(val, config),
            EmbeddingStore(teacher, args.work / "embeddings"), out, settings, card, shown,
        )  # fmt: skip
    print(
        json.dumps(
            {
                **card,
                "out": str(out),
                "minutes": round((time.monotonic() - started) / 60, 1),
                "history": report.history[-3:],
            }  # fmt: skip
        )
    )


if __name__ == "__main__":
    main()
