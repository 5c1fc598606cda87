"""Reproduce MiniSAM v3 end to end, in miniature, on the project's data: the 2 M-parameter model that
was the embedded default until LiteMedSAM taught clicks replaced it, now the tests' small model
(Testing/data/models, README there).

    git show 4a90b78:minisam/pretrained/minisam_teacher_v1.safetensors > /tmp/teacher_v1.safetensors
    OMP_NUM_THREADS=2 python scripts/reproduce_default.py --data ../shared/data --work /tmp/minisam_v3 \
        --teacher /tmp/teacher_v1.safetensors

1. teacher: v1, a 'small' SAM trained on every modality but ultrasound (``--teacher``: it left the
   package with v3 and is in the git history; ``--train-teacher`` retrains it with
   scripts/train_default.py: v0 from scratch, then v1 continued from it, about 75 min on 2 CPU cores);
2. student: ``distill`` the teacher's encoder into the ``student`` preset (embedding MSE + cosine on
   the training images and ``--distill-views`` augmented views of each, teacher embeddings cached);
   it keeps the teacher's decoder. (End-to-end fine-tuning afterwards, ``--finetune-epochs``,
   lowered validation Dice for v1: 0.352 -> 0.33 after 1-3 epochs);
3. few-shot ultrasound adapters on the student: QLoRA on its NF4 encoder, and AdaLoRA-QAT
   (INT8 attention), from 50 labelled HC18 slices (scripts/train_us_adapter.py);
4. a chest X-ray adapter (QLoRA, rank 16) from the 77 Montgomery training cases, the cases the
   teacher and student trained on: the held-out 11 stay unseen;
5. the table: ``minisam evaluate`` of teacher, student, NF4 student, student + adapters on the
   committed manifests in docs/eval, written to docs/training/ (``--table-out``).

``--install`` copies the student and the two QLoRA adapters into Testing/data/models/. About
35 minutes on 2 CPU cores without --train-teacher (the script runs everything on the CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from minisam.adapters.adapter_io import ship_adapter
from minisam.training.base_trainer import TrainSettings, train_base
from minisam.training.default_recipe import (
    LICENCES,
    default_samples,
    montgomery_split,
    unlabelled_training_slices,
)
from minisam.training.distill import (
    DistillSettings,
    build_student,
    distill,
    student_config,
)
from minisam.training.embedding_store import EmbeddingStore
from minisam.training.manifest import write_manifest
from minisam.training.model_inputs import to_model_inputs

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "Testing" / "data" / "models"
EVAL_MANIFESTS = ("cxr_heldout.csv", "us_hc18.csv", "volumes.csv")


def run(command: list[str]) -> None:
    """Run a step as its own process (so each one's time and memory are its own)."""
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def make_student(args: argparse.Namespace, teacher_path: Path) -> tuple[Path, dict]:
    """Distil and fine-tune the student; returns its checkpoint and the timings."""
    from minisam.model_loader import load_model

    teacher = load_model(str(teacher_path))
    train, val = default_samples(args.data)
    images = train  # label-free: distillation may also see the unlabelled slices
    if args.distill_unlabelled:
        images = train + unlabelled_training_slices(args.data)
    config = student_config(teacher.config, args.student)
    torch.manual_seed(args.seed)
    student = build_student(teacher, config)
    card = {
        "name": args.name,
        "teacher": teacher_path.name,
        "teacher_hash": teacher.base_hash(),
        "student": args.student,
        "augmented_views": args.distill_views,
        "unlabelled_slices": args.distill_unlabelled,
        "datasets": LICENCES,
        "command": "python scripts/reproduce_default.py " + " ".join(sys.argv[1:]),
    }
    distilled = args.work / "student_distilled.safetensors"
    started = time.monotonic()
    report = distill(
        teacher, student, config,
        (to_model_inputs(images, teacher.config), to_model_inputs(images, config)),
        to_model_inputs(val, config), EmbeddingStore(teacher, args.work / "teacher_cache"),
        distilled,
        DistillSettings(
            epochs=args.distill_epochs, seed=args.seed, augmented_views=args.distill_views
        ),
        card,
    )  # fmt: skip
    distill_minutes = (time.monotonic() - started) / 60
    tuned = args.work / "student.safetensors"
    shutil.copy(distilled, tuned)
    fine = None
    if (
        args.finetune_epochs
    ):  # end-to-end; replaces the distilled weights only if validation improves
        fine = train_base(
            load_model(str(distilled)).sam, config, to_model_inputs(train, config),
            to_model_inputs(val, config), tuned,
            TrainSettings(epochs=args.finetune_epochs, learning_rate=1e-4, seed=args.seed),
            dict(card, finetune_epochs=args.finetune_epochs), baseline=True,
        )  # fmt: skip
    times = {
        "distill_minutes": round(distill_minutes, 2),
        "distill_final_loss": report.history[-1]["train_loss"],
        "distill_val_dice": round(report.history[-1]["val_dice"], 4),
    }
    if fine is not None:
        times.update(
            finetune_minutes=round(fine.seconds / 60, 2), finetune_best_epoch=fine.best_epoch
        )
    return tuned, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/minisam_v3"))
    parser.add_argument("--student", default="student")
    parser.add_argument("--distill-epochs", type=int, default=12)
    parser.add_argument(
        "--distill-views", type=int, default=3, help="augmented views per image (distill --views)"
    )
    parser.add_argument(
        "--distill-unlabelled",
        action="store_true",
        help="distil on every axial slice of the training volumes, not only the labelled ones",
    )
    parser.add_argument(
        "--teacher", type=Path, help="the teacher checkpoint (see above; or --train-teacher)"
    )
    parser.add_argument("--name", default="minisam-default-v3", help="the student's card name")
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="end-to-end epochs after distillation"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-teacher", action="store_true")
    parser.add_argument("--install", action="store_true", help="install into Testing/data/models/")
    parser.add_argument("--table-out", type=Path, default=ROOT / "docs" / "training")
    args = parser.parse_args()
    if args.teacher is None and not args.train_teacher:
        parser.error("give --teacher FILE (see the docstring) or --train-teacher")
    args.data = args.data.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    python = sys.executable

    teacher = args.teacher
    if args.train_teacher:  # v0 from scratch, then v1: v0 continued (scripts/train_default.py)
        scratch, teacher = args.work / "teacher_v0.safetensors", args.work / "teacher.safetensors"
        run([python, "scripts/train_default.py", "--data", str(args.data), "--out", str(scratch)])
        run([python, "scripts/train_default.py", "--data", str(args.data), "--init", str(scratch),
             "--name", "minisam-teacher-v1", "--epochs", "6", "--lr", "1e-4",
             "--max-minutes", "45", "--out", str(teacher)])  # fmt: skip
    done = args.work / "student_times.json"
    if (
        done.is_file() and (args.work / "student.safetensors").is_file()
    ):  # a rerun after a later step failed
        student, times = args.work / "student.safetensors", json.loads(done.read_text())
    else:
        student, times = make_student(args, teacher)
        done.write_text(json.dumps(times))
    adapters = {}
    for method, name in (("lora", "us_hc18"), ("adalora-qat", "us_hc18_qat")):
        work = args.work / name
        shipped = args.install and method == "lora"  # the QAT adapter is for the table only
        ship = ["--ship", str(INSTALL / "adapters" / name)] if shipped else []
        run([python, "scripts/train_us_adapter.py", "--data", str(args.data), "--work", str(work),
             "--model", str(student), "--method", method, "--name", name, "--include-decoder",
             "--base-name", "minisam_v3",
             "--epochs", "40", *ship])  # fmt: skip
        adapters[name] = work / name
        times[f"{name}_minutes"] = json.loads((work / "results.json").read_text())["train_minutes"]
    adapters["xray_cxr"], times["xray_cxr_minutes"] = train_xray_adapter(args, student)
    (args.work / "times.json").write_text(json.dumps(times, indent=1))
    if args.install:
        shutil.copy(student, INSTALL / "minisam_v3.safetensors")
        ship_adapter(
            adapters["xray_cxr"],
            INSTALL / "adapters" / "xray_cxr",
            "minisam_v3",
            training_data={
                "dataset": "Montgomery County chest X-rays, lungs (77 training cases)",
                "licence": LICENCES["cxr_montgomery"],
                "source": "cxr_train.csv (shared/data/cxr_lung_montgomery_shenzhen, MCUCXR_*)",
            },
        )
    manifests = [a for m in EVAL_MANIFESTS for a in ("--manifest", f"docs/eval/{m}")]
    qat = json.loads((adapters["us_hc18_qat"] / "minisam_adapter.json").read_text())
    qat_quant = qat["training_data"]["quant"]
    configs = [
        f"teacher={teacher}",
        f"student={student}",
        f"student_nf4={student},quant=nf4",
        f"student_nf4_lora_us={student},quant=nf4,adapter={adapters['us_hc18']}",
        f"student_int8qat_us={student},quant={qat_quant},adapter={adapters['us_hc18_qat']}",
        f"student_fp32_adalora_us={student},adapter={adapters['us_hc18_qat']}",
        f"student_nf4_lora_xray={student},quant=nf4,adapter={adapters['xray_cxr']}",
    ]
    run([python, "-m", "minisam", "evaluate", *manifests,
         *(a for c in configs for a in ("--config", c)), "--out", str(args.table_out / "eval"),
         "--fresh", "--quiet"])  # fmt: skip
    shutil.copy(args.work / "times.json", args.table_out / "times.json")
    table = training_table(
        args.table_out / "eval" / "summary.json", times, teacher, student, adapters
    )
    (args.table_out / "table.md").write_text(table)
    print(table)


def train_xray_adapter(args: argparse.Namespace, student: Path) -> tuple[Path, float]:
    """QLoRA chest X-ray adapter on the NF4 student from the Montgomery training cases."""
    train, _ = montgomery_split(args.data)
    manifest = args.work / "cxr_train.csv"
    write_manifest(
        manifest, [{"image": str(i), "label": str(m), "modality": "xray"} for i, m in train]
    )
    out = args.work / "xray_cxr"
    started = time.monotonic()
    run([sys.executable, "-m", "minisam", "train-adapter", "--manifest", str(manifest),
         "--modality", "DX", "--name", "xray_cxr", "--model", str(student), "--include-decoder",
         "--rank", "16", "--lr", "2e-3", "--patience", "8", "--epochs", "40",
         "--seed", str(args.seed), "--out", str(out), "--overwrite", "--quiet"])  # fmt: skip
    return out, round((time.monotonic() - started) / 60, 2)


def training_table(summary: Path, times: dict, teacher: Path, student: Path, adapters: dict) -> str:
    """Markdown: Dice / NSD per dataset and configuration, then what each stage trained and how long."""
    from minisam.adapters.metadata import read_metadata
    from minisam.model_config import count_parameters
    from minisam.model_loader import load_model

    data = json.loads(summary.read_text())
    configs = [c["name"] for c in data["configs"]]
    lines = ["| dataset | modality | n | " + " | ".join(configs) + " |",
             "|---|---|---|" + "---|" * len(configs)]  # fmt: skip
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for entry in data["summary"]:
        m = entry["metrics"]
        key = (entry["dataset"], entry["modality"])
        text = f"{m['dice']['mean']:.3f} / {m['nsd']['mean']:.3f}"
        cells.setdefault(key, {"n": str(entry["n_ok"])})[entry["config"]] = text
    for (dataset, modality), row in cells.items():
        values = " | ".join(row.get(c, "–") for c in configs)
        lines.append(f"| {dataset} | {modality} | {row['n']} | {values} |")
    t, s = load_model(str(teacher)), load_model(str(student))
    stages = [
        ("teacher (v1 = v0 continued; all but US)", count_parameters(t.sam), "see its card"),
        ("student: distilled encoder", count_parameters(s.sam.image_encoder),
         f"{times['distill_minutes']:.1f}"),
    ]  # fmt: skip
    for name, folder in adapters.items():
        meta = read_metadata(folder)
        method = meta.spec.get("method", "lora")
        stages.append((f"adapter {name} ({method}, base {meta.training_data['quant']})",
                       meta.trainable_params, f"{times[f'{name}_minutes']:.1f}"))  # fmt: skip
    lines += ["", "| stage | trainable parameters | minutes (2 CPU threads) |", "|---|---|---|"]
    lines += [f"| {name} | {params:,} | {minutes} |" for name, params, minutes in stages]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
