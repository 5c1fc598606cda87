"""Train a whole SAM-architecture model on slice samples (``minisam train-base``).

Loss, prompts, schedule, resume and torchrun support are those of :mod:`minisam.training.loop`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from minisam.atomic import atomic_output
from minisam.checkpoints import save_checkpoint
from minisam.model_config import SamConfig
from minisam.prompts import (
    Prompt,
    check_lone_click,
    interior_point,
    mask_bounding_box,
    refinement_prompt,
)
from minisam.training.distributed import World
from minisam.training.loop import LoopHooks, ProgressCallback, TrainReport, TrainSettings, fit
from minisam.training.mask_loss import PromptedMaskLoss, SimulatedPromptBatches, decode
from minisam.training.model_inputs import ModelInputs

__all__ = ["TrainReport", "TrainSettings", "train_base", "validation_dice"]


def validation_dice(
    sam: torch.nn.Module,
    data: ModelInputs,
    config: SamConfig,
    batch_size: int = 8,
    prompt: str = "box",
    embeddings: torch.Tensor | None = None,
    lone_click: str = "refine",
) -> float:
    """Mean Dice over ``data`` at model-input resolution for one kind of prompt.

    ``prompt``: "box" = the exact bounding box, one mask; "click" = one positive click at the most
    interior pixel answered as the product answers it (:meth:`minisam.engine.SamEngine.predict`):
    of SAM's three masks the one its IoU head rates best, then with ``lone_click="refine"`` the
    answer to :func:`~minisam.prompts.refinement_prompt` (the click plus that mask's box; "raw": the
    best as it is).
    ``embeddings``: the images' embeddings when the encoder is frozen and they are cached.
    """
    if prompt not in ("box", "click"):
        raise ValueError(f"unknown validation prompt {prompt!r}")
    check_lone_click(lone_click, "lone_click")
    was_training = sam.training
    sam.eval()
    dices = []
    device = next(sam.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            if embeddings is None:
                images = data.images[start : start + batch_size].to(device).float()
                features = sam.image_encoder(sam.preprocess(images))
            else:
                features = embeddings[start : start + batch_size].to(device)
            for j in range(features.shape[0]):
                truth = data.masks[start + j].to(device)
                asked = _validation_prompt(truth, prompt)
                logits, iou, _ = decode(
                    sam, features[j], asked, prompt == "click", config.image_size
                )
                pred = logits[int(iou.argmax())] > 0
                if prompt == "click" and lone_click == "refine":
                    pred = _refined(sam, features[j], asked, pred, config.image_size)
                inter = (pred & truth).sum().item()
                dices.append(2 * inter / max(1, pred.sum().item() + truth.sum().item()))
    sam.train(was_training)
    return float(np.mean(dices)) if dices else float("nan")


def _refined(
    sam: torch.nn.Module, features: torch.Tensor, click: Prompt, best: torch.Tensor, size: int
) -> torch.Tensor:
    """A lone click's best mask ``best`` replaced by the answer to the click plus its box (kept
    when that answer is empty), as :meth:`minisam.engine.SamEngine.predict` refines it."""
    boxed = refinement_prompt(click, best.cpu().numpy())
    if boxed is None:
        return best
    logits, _, _ = decode(sam, features, boxed, False, size)
    answer = logits[0] > 0
    return answer if bool(answer.any()) else best


def _validation_prompt(truth: torch.Tensor, kind: str) -> Prompt:
    mask = truth.cpu().numpy()
    if kind == "box":
        return Prompt(box=mask_bounding_box(mask))
    return Prompt(points=interior_point(mask)[None], labels=np.ones(1, dtype=np.int64))


def train_base(
    sam: torch.nn.Module,
    config: SamConfig,
    train: ModelInputs,
    val: ModelInputs,
    out: Path,
    settings: TrainSettings,
    card: dict | None = None,
    progress: ProgressCallback | None = None,
    resume_from: Path | None = None,
    world: World | None = None,
    baseline: bool = False,
) -> TrainReport:
    """Train all of ``sam``; after each epoch validate and keep the best checkpoint at ``out``.

    ``sam`` ends with the last weights; ``out`` holds the best ones (with ``card`` and the
    validation Dice in its metadata), ``out.history.json`` the per-epoch history, and
    ``out.resume.pt`` the resume file while the run is unfinished (cancelled or over time).
    ``baseline``: the starting weights count as epoch -1, so ``out`` is only replaced by better ones.
    """
    out = Path(out)

    def save_best(epoch: int, val_dice: float) -> None:
        meta = dict(card or {}, val_dice=round(val_dice, 4), epoch=epoch, settings=asdict(settings))
        save_checkpoint(sam, config, out, card=dict(meta, trained=True))

    torch.manual_seed(settings.seed)
    params = {name: p for name, p in sam.named_parameters() if p.requires_grad}
    report, _ = fit(
        PromptedMaskLoss(sam, config, settings.iou_loss_weight, settings.correction_clicks),
        SimulatedPromptBatches(
            train, settings.seed, settings.box_probability, settings.geometric_augmentation
        ),
        params,
        lambda: validation_dice(sam, val, config),
        settings,
        LoopHooks(progress=progress, on_best=save_best),
        baseline=baseline,
        state_file=resume_file(out),
        resume_from=resume_from,
        world=world,
    )
    if world is None or world.is_main:
        with atomic_output(out.with_suffix(".history.json")) as tmp:
            tmp.write_text(json.dumps(asdict(report), indent=1))
    return report


def resume_file(out: Path) -> Path:
    """Where a run writing ``out`` keeps its resume file."""
    return Path(out).with_suffix(".resume.pt")
