"""Train a LoRA / AdaLoRA adapter on a frozen (by default NF4-quantized) SAM base: QLoRA.

The base is quantized first (its fp32 hash is recorded before any layer changes), then the adapter is
attached; only the adapter's parameters get gradients. On CPU the NF4 layers run with the
"dequantize" strategy by default: fp32 copies computed once from the stored 4-bit weights, so the
forward pass sees exactly the quantized weights (QLoRA semantics) with ordinary autograd.
The loss, prompts, augmentation and validation are those of :mod:`minisam.training.base_trainer`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss
from peft import PeftModel

from minisam.adapters.lora import AdapterSpec, adapter_parameters, attach_adapter
from minisam.checkpoints import LoadedModel
from minisam.errors import InputError
from minisam.model_config import SamConfig
from minisam.quantization import quantize_model
from minisam.training.base_trainer import (
    ProgressCallback,
    TrainReport,
    TrainSettings,
    _hard_iou,
    decode,
    validation_dice,
)
from minisam.training.model_inputs import ModelInputs, augment, to_model_inputs
from minisam.training.prompt_simulation import random_prompt
from minisam.training.slice_samples import SliceSample

QUANT_CHOICES = ("nf4", "int8", "fp32")


@dataclass
class AdapterTrainSettings(TrainSettings):
    """:class:`TrainSettings` plus early stopping and the CPU strategy of the quantized base."""

    epochs: int = 20
    batch_size: int = 4
    learning_rate: float = 1e-3
    patience: int = 4
    cpu_strategy: str = "dequantize"


@dataclass
class AdapterTrainReport(TrainReport):
    """What :func:`train_adapter` did; ``best_epoch`` -1 means the identity adapter stayed best."""

    zero_shot_val_dice: float = float("nan")
    base_hash: str = ""
    quant: str = "fp32"
    trainable_params: int = 0
    train_slices: int = 0
    val_slices: int = 0
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)


def _sample_loss(
    sam: torch.nn.Module,
    features: torch.Tensor,
    truth: torch.Tensor,
    config: SamConfig,
    settings: TrainSettings,
    rng: np.random.Generator,
    loss_fn: DiceFocalLoss,
) -> torch.Tensor:
    """Base-trainer loss for one image: best-of-K Dice+focal, plus MSE on the IoU head."""
    prompt = random_prompt(truth.numpy(), rng, settings.box_probability)
    logits, iou = decode(sam, features, prompt, prompt.box is None, config.image_size)
    target = truth[None, None].float()
    per_mask = torch.stack([loss_fn(logits[k][None, None], target) for k in range(len(logits))])
    iou_target = _hard_iou(logits.detach(), truth[None].expand_as(logits))
    return per_mask.min() + settings.iou_loss_weight * F.mse_loss(iou, iou_target)


def _snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in params.items()}


def _restore(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(saved[key])


def train_adapter(
    loaded: LoadedModel,
    train_samples: list[SliceSample],
    val_samples: list[SliceSample],
    spec: AdapterSpec,
    settings: AdapterTrainSettings | None = None,
    quant: str = "nf4",
    progress: ProgressCallback | None = None,
    name: str = "default",
) -> tuple[PeftModel, AdapterTrainReport]:
    """Quantize ``loaded`` (unless ``quant`` is "fp32"), attach adapter ``name`` and train it.

    Validates exact-box Dice on ``val_samples`` before training and after every epoch, keeps the
    best adapter weights (the identity adapter counts as epoch -1), stops after ``patience`` epochs
    without improvement, on ``max_minutes`` or when ``progress`` returns False (then the best
    weights so far are restored, so the adapter stays usable). ``loaded.sam`` is modified in place.
    """
    settings = settings or AdapterTrainSettings()
    if quant not in QUANT_CHOICES:
        raise InputError(f"--quant must be one of {', '.join(QUANT_CHOICES)}, not {quant!r}")
    if not train_samples or not val_samples:
        raise InputError(
            f"adapter training needs training and validation slices "
            f"(got {len(train_samples)} and {len(val_samples)})"
        )
    config = loaded.config
    report = AdapterTrainReport(base_hash=loaded.base_hash(), quant=quant)
    if quant != "fp32":
        quantize_model(loaded, quant, cpu_strategy=settings.cpu_strategy)
    torch.manual_seed(settings.seed)
    model = attach_adapter(loaded.sam, spec, name)
    params = adapter_parameters(model, name)
    report.trainable_params = sum(p.numel() for p in params.values())
    train = to_model_inputs(train_samples, config)
    val = to_model_inputs(val_samples, config)
    report.train_slices, report.val_slices = len(train), len(val)
    _fit(model, loaded.sam, config, train, val, params, settings, report, progress)
    model.eval()
    return model, report


def _fit(
    model: PeftModel,
    sam: torch.nn.Module,
    config: SamConfig,
    train: ModelInputs,
    val: ModelInputs,
    params: dict[str, torch.nn.Parameter],
    settings: AdapterTrainSettings,
    report: AdapterTrainReport,
    progress: ProgressCallback | None,
) -> None:
    """The epoch loop of :func:`train_adapter` (fills ``report``, leaves the best weights)."""
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        list(params.values()), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    warmup = max(1, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total_steps - warmup)))
        ),
    )
    adalora = model.peft_type.value == "ADALORA"
    loss_fn = DiceFocalLoss(sigmoid=True)
    started = time.monotonic()
    report.zero_shot_val_dice = report.best_val_dice = validation_dice(sam, val, config)
    best, global_step, stale = _snapshot(params), 0, 0
    for epoch in range(settings.epochs):
        sam.train()
        order = torch.randperm(len(train), generator=generator)
        losses: list[float] = []
        for step in range(steps_per_epoch):
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            images, masks = augment(train.images[index], train.masks[index], generator)
            features = sam.image_encoder(sam.preprocess(images))
            total = sum(
                _sample_loss(sam, features[j], masks[j], config, settings, rng, loss_fn)
                for j in range(len(index))
            )
            loss = total / len(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            optimizer.step()
            scheduler.step()
            global_step += 1
            if adalora:  # peft: after optimizer.step(), before the gradients are cleared
                model.base_model.update_and_allocate(global_step)
            losses.append(float(loss.detach()))
            info = {"epoch": epoch, "step": step, "steps": steps_per_epoch, "loss": losses[-1]}
            if progress is not None and progress(info) is False:
                report.cancelled = True
                break
        val_dice = validation_dice(sam, val, config)
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_dice": val_dice,
            "minutes": (time.monotonic() - started) / 60,
        }
        report.history.append(row)
        if progress is not None:
            progress({"epoch": epoch, "validation": row})
        if val_dice > report.best_val_dice:
            report.best_val_dice, report.best_epoch, stale = val_dice, epoch, 0
            best = _snapshot(params)
        else:
            stale += 1
        over_time = settings.max_minutes is not None and row["minutes"] > settings.max_minutes
        if stale >= settings.patience and epoch < settings.epochs - 1:
            report.stopped_early = True
        if report.cancelled or over_time or report.stopped_early:
            break
    _restore(params, best)
    if adalora and getattr(model.peft_config[model.active_adapter], "rank_pattern", None):
        # Weights from an earlier epoch: re-apply the final rank budget so saving drops the same ranks.
        tuner = model.base_model
        tuner.rankallocator.mask_using_rank_pattern(
            tuner.model, model.peft_config[model.active_adapter].rank_pattern
        )
    report.seconds = time.monotonic() - started
