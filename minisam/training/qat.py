"""AdaLoRA-QAT: an adaptive-rank adapter in full precision, then quantization-aware fine-tuning.

Stage 1 trains an AdaLoRA adapter on the fp32 base (ranks re-allocated between layers). Stage 2
quantizes selected layer groups of a fresh copy of the base (INT8 on the attention by default),
loads the stage-1 adapter at its final ranks and fine-tunes it *through* the quantized layers, so
the adapter learns to compensate their error. MiniSAM deploys exactly this: a quantized frozen
encoder with an fp32 adapter on top, so the stage-2 forward pass is the deployed forward pass.

Stage 2 starts from stage 1's adapter on the quantized base, i.e. post-training quantization
(PTQ); its validation Dice is the baseline the QAT epochs must beat and is reported as such.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import replace
from pathlib import Path

from peft import PeftModel

from minisam.adapters.adapter_io import load_adapter, save_adapter
from minisam.adapters.lora import AdapterSpec
from minisam.checkpoints import LoadedModel
from minisam.errors import InputError
from minisam.quantization import quantize_model
from minisam.training.adapter_trainer import (
    AdapterTrainReport,
    AdapterTrainSettings,
    check_quant,
    fit_adapter,
    train_adapter,
)
from minisam.training.loop import ProgressCallback
from minisam.training.slice_samples import SliceSample

DEFAULT_QAT_SCHEME = "int8:attn"


def _staged(progress: ProgressCallback | None, stage: int) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda info: progress(dict(info, stage=stage))


def train_adapter_qat(
    loaded: LoadedModel,
    train_samples: list[SliceSample],
    val_samples: list[SliceSample],
    spec: AdapterSpec,
    modality: str,
    settings: AdapterTrainSettings | None = None,
    qat_scheme: str = DEFAULT_QAT_SCHEME,
    qat_epochs: int | None = None,
    progress: ProgressCallback | None = None,
    name: str = "default",
) -> tuple[PeftModel, AdapterTrainReport, LoadedModel]:
    """The two-stage recipe; returns the stage-2 model, a report and the quantized base it runs on.

    Arguments:
      spec: an AdaLoRA spec for stage 1 (its final ranks are kept in stage 2).
      modality: the adapter's modality (stored with the intermediate adapter).
      qat_scheme: what stage 2 quantizes ("int8:attn", "int8", "nf4:mlp+int8:attn", ...).
      qat_epochs: stage-2 epochs (default: half of ``settings.epochs``, at least 1).

    The report's ``history`` has both stages (rows carry "stage"); ``extra`` holds the stage-1
    (fp32) validation Dice, the PTQ Dice and the QAT Dice. A cancel during stage 1 skips stage 2.
    """
    settings = settings or AdapterTrainSettings()
    if spec.method != "adalora":
        raise InputError("AdaLoRA-QAT needs an AdaLoRA adapter spec (method 'adalora')")
    scheme = check_quant(qat_scheme)
    if not scheme.groups:
        raise InputError(f"--qat-scheme {qat_scheme!r} quantizes nothing; use e.g. int8:attn")
    fresh = copy.deepcopy(loaded)  # stage 2 needs the base without stage 1's peft layers
    model, first = train_adapter(
        loaded, train_samples, val_samples, spec, settings, "fp32", _staged(progress, 1), name
    )
    for row in first.history:
        row["stage"] = 1
    if first.cancelled:
        first.extra = {"stage1_val_dice": first.best_val_dice, "qat_scheme": None}
        return model, first, loaded
    with tempfile.TemporaryDirectory(prefix="minisam-qat-") as tmp:
        meta = {"name": name, "modality": modality, "base_hash": first.base_hash}
        folder = save_adapter(model, name, Path(tmp) / name, meta)
        quantize_model(fresh, scheme, cpu_strategy=settings.cpu_strategy)
        quantized = load_adapter(fresh.sam, folder, first.base_hash, name=name, trainable=True)
    stage2 = replace(
        settings,
        epochs=qat_epochs or max(1, settings.epochs // 2),
        learning_rate=settings.learning_rate / 3,
        seed=settings.seed + 1,
    )
    second = fit_adapter(
        quantized, name, fresh, train_samples, val_samples, stage2, _staged(progress, 2), False
    )
    for row in second.history:
        row["stage"] = 2
    stage_epochs = (len(first.history), len(second.history))
    report = second
    report.history = first.history + second.history
    report.zero_shot_val_dice = first.zero_shot_val_dice
    report.base_hash, report.quant = first.base_hash, qat_scheme
    report.seconds = first.seconds + second.seconds
    report.extra = {
        "stage1_val_dice": first.best_val_dice,
        "ptq_val_dice": second.baseline_val_dice,
        "qat_val_dice": second.best_val_dice,
        "qat_scheme": qat_scheme,
        "stage1_epochs": stage_epochs[0],
        "stage2_epochs": stage_epochs[1],
    }
    return quantized, report, fresh
