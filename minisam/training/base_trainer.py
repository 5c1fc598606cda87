"""Train a SAM-architecture model on slice samples: Dice + focal loss on masks, MSE on the IoU head."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from minisam.checkpoints import save_checkpoint
from minisam.model_config import SamConfig
from minisam.prompts import Prompt
from minisam.training.model_inputs import ModelInputs, augment
from minisam.training.prompt_simulation import random_prompt

ProgressCallback = Callable[[dict], bool | None]  # return False to cancel


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 0
    box_probability: float = 0.6
    iou_loss_weight: float = 1.0
    max_minutes: float | None = None


@dataclass
class TrainReport:
    best_val_dice: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False


def _prompt_tensors(prompt: Prompt, device: torch.device):
    points = None
    if prompt.points is not None:
        points = (
            torch.as_tensor(prompt.points, dtype=torch.float32, device=device)[None],
            torch.as_tensor(prompt.labels, dtype=torch.int64, device=device)[None],
        )
    box = (
        None
        if prompt.box is None
        else torch.as_tensor(prompt.box, dtype=torch.float32, device=device)[None]
    )
    return points, box


def decode(
    sam: torch.nn.Module, features: torch.Tensor, prompt: Prompt, multimask: bool, image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits at the padded model-input resolution (K, S, S) and predicted IoU (K,) for one image."""
    points, box = _prompt_tensors(prompt, features.device)
    sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=features[None],
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    logits = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    return logits[0], iou[0]


def _hard_iou(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    pred = logits > 0
    inter = (pred & truth).flatten(1).sum(1).float()
    union = (pred | truth).flatten(1).sum(1).float().clamp(min=1)
    return inter / union


def validation_dice(
    sam: torch.nn.Module, data: ModelInputs, config: SamConfig, batch_size: int = 8
) -> float:
    """Mean Dice of box prompts (exact bounding boxes) over ``data``, at model-input resolution."""
    sam.eval()
    dices = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            images = data.images[start : start + batch_size].float()
            features = sam.image_encoder(sam.preprocess(images))
            for j in range(images.shape[0]):
                truth = data.masks[start + j]
                rows = torch.nonzero(truth.any(1)).flatten()
                cols = torch.nonzero(truth.any(0)).flatten()
                box = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)
                logits, _ = decode(sam, features[j], Prompt(box=box), False, config.image_size)
                pred = logits[0] > 0
                inter = (pred & truth).sum().item()
                dices.append(2 * inter / max(1, pred.sum().item() + truth.sum().item()))
    return float(np.mean(dices)) if dices else float("nan")


def train_base(
    sam: torch.nn.Module,
    config: SamConfig,
    train: ModelInputs,
    val: ModelInputs,
    out: Path,
    settings: TrainSettings,
    card: dict | None = None,
    progress: ProgressCallback | None = None,
) -> TrainReport:
    """Train all of ``sam`` on ``train``; after each epoch validate and keep the best checkpoint at ``out``."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        sam.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.learning_rate,
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.05,
    )
    loss_fn = DiceFocalLoss(sigmoid=True)
    report, started = TrainReport(), time.monotonic()
    for epoch in range(settings.epochs):
        sam.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            images, masks = augment(train.images[index], train.masks[index], generator)
            features = sam.image_encoder(sam.preprocess(images))
            total = torch.zeros(())
            for j in range(len(index)):
                truth = masks[j]
                prompt = random_prompt(truth.numpy(), rng, settings.box_probability)
                multimask = prompt.box is None
                logits, iou = decode(sam, features[j], prompt, multimask, config.image_size)
                target = truth[None, None].float().expand(logits.shape[0], 1, -1, -1)
                per_mask = torch.stack(
                    [
                        loss_fn(logits[k][None, None], target[k][None])
                        for k in range(logits.shape[0])
                    ]
                )
                best = int(torch.argmin(per_mask))
                iou_target = _hard_iou(logits.detach(), truth[None].expand_as(logits))
                total = (
                    total + per_mask[best] + settings.iou_loss_weight * F.mse_loss(iou, iou_target)
                )
            loss = total / len(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if (
                progress is not None
                and progress(
                    {"epoch": epoch, "step": step, "steps": steps_per_epoch, "loss": losses[-1]}
                )
                is False
            ):
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
            report.best_val_dice, report.best_epoch = val_dice, epoch
            full_card = dict(
                card or {},
                val_dice=round(val_dice, 4),
                epoch=epoch,
                settings=asdict(settings),
                trained=True,
            )
            save_checkpoint(sam, config, out, card=full_card)
        over_time = settings.max_minutes is not None and row["minutes"] > settings.max_minutes
        if report.cancelled or over_time:
            break
    report.seconds = time.monotonic() - started
    out.with_suffix(".history.json").write_text(json.dumps(asdict(report), indent=1))
    return report
