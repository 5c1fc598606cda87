"""Teach SAM's IoU head to rank a lone click's three candidate masks, on decoder outputs computed once.

A lone click is ambiguous (part, object or whole?), so the mask decoder answers with three candidates
and the user gets the one its IoU head rates best. A model whose prompt path learnt clicks can still
have a head that hardly tells its candidates apart: then the best of the three is there and is not
the one shown. Here everything but the head's MLP stays frozen, so each simulated prompt's decoder
pass runs once: the head's input (the IoU token's output) and the hard IoU of every candidate with
the truth are kept, and the MLP is fitted on them. The masks cannot change (a box's mask is
identical by construction); only the ranking and the predicted IoU shown to users do.
The head is selected on validation prompts by the Dice of the candidate it ranks first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from minisam.errors import InputError
from minisam.model_config import SamConfig
from minisam.prompts import Prompt, interior_point
from minisam.training.mask_loss import decode, hard_iou
from minisam.training.prompt_simulation import random_prompt


@dataclass
class IouHeadSettings:
    """How the head's training prompts are drawn and how long it fits.

    Arguments:
      prompts_per_image: decoder passes kept per image: the most interior click, then prompts of
        :func:`~minisam.training.prompt_simulation.random_prompt` (one to three clicks or a box).
      box_probability: share of those random prompts that are boxes (their one mask trains output 0).
    """

    prompts_per_image: int = 8
    box_probability: float = 0.2
    epochs: int = 300
    batch_size: int = 256
    learning_rate: float = 1e-3
    validate_every: int = 10
    seed: int = 0


@dataclass
class HeadSamples:
    """Frozen decoder passes: the head's input, each output's IoU target, which outputs ran, and
    the Dice of each of a lone click's three candidates (NaN for single-mask prompts)."""

    features: torch.Tensor  # (N, C)
    targets: torch.Tensor  # (N, 4) hard IoU of the mask of each head output
    valid: torch.Tensor  # (N, 4) bool: outputs 1..3 for a lone click, output 0 otherwise
    candidate_dice: torch.Tensor  # (N, 3)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def lone_clicks(self) -> torch.Tensor:
        return self.valid[:, 1]


@dataclass
class IouHeadReport:
    """Validation Dice of the candidate ranked first, before and after, and the best of three."""

    click_dice_before: float = float("nan")
    click_dice: float = float("nan")
    click_dice_oracle: float = float("nan")
    best_epoch: int = -1
    trainable_params: int = 0
    train_prompts: int = 0
    val_prompts: int = 0
    history: list[dict] = field(default_factory=list)


def _prompts(mask: np.ndarray, rng: np.random.Generator, settings: IouHeadSettings) -> list[Prompt]:
    first = Prompt(points=interior_point(mask)[None], labels=np.ones(1, dtype=np.int64))
    others = [
        random_prompt(mask, rng, settings.box_probability)
        for _ in range(settings.prompts_per_image - 1)
    ]
    return [first, *others]


@torch.inference_mode()
def head_samples(
    sam: torch.nn.Module,
    config: SamConfig,
    embeddings: torch.Tensor,
    masks: torch.Tensor,
    settings: IouHeadSettings,
    progress: Callable[[int, int], None] | None = None,
) -> HeadSamples:
    """Run the frozen decoder once per simulated prompt of every image and keep what the head needs."""
    captured: list[torch.Tensor] = []
    hook = sam.mask_decoder.iou_prediction_head.register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0].detach().clone())
    )
    rng = np.random.default_rng(settings.seed)
    features, targets, valid, dices = [], [], [], []
    try:
        for i in range(len(embeddings)):
            truth = masks[i]
            for prompt in _prompts(truth.numpy(), rng, settings):
                multimask = prompt.is_ambiguous
                logits, _, _ = decode(sam, embeddings[i], prompt, multimask, config.image_size)
                iou = hard_iou(logits, truth[None].expand_as(logits))
                row_target, row_valid = torch.zeros(4), torch.zeros(4, dtype=torch.bool)
                row_dice = torch.full((3,), float("nan"))
                if multimask:
                    row_target[1:], row_valid[1:] = iou, True
                    row_dice = 2 * iou / (1 + iou)
                else:
                    row_target[0], row_valid[0] = iou[0], True
                features.append(captured.pop()[0])
                targets.append(row_target)
                valid.append(row_valid)
                dices.append(row_dice)
            if progress is not None:
                progress(i + 1, len(embeddings))
    finally:
        hook.remove()
    return HeadSamples(
        torch.stack(features), torch.stack(targets), torch.stack(valid), torch.stack(dices)
    )


def ranked_first_dice(head: torch.nn.Module, samples: HeadSamples) -> tuple[float, float]:
    """(mean Dice of the lone-click candidate ``head`` ranks first, mean Dice of the best one)."""
    lone = samples.lone_clicks
    if not lone.any():
        raise InputError("no lone-click prompts to validate the IoU head on")
    with torch.no_grad():
        scores = head(samples.features[lone])[:, 1:]
    dice = samples.candidate_dice[lone]
    chosen = dice.gather(1, scores.argmax(1, keepdim=True))[:, 0]
    return float(chosen.mean()), float(dice.max(1).values.mean())


def tune_iou_head(
    sam: torch.nn.Module,
    train: HeadSamples,
    val: HeadSamples,
    settings: IouHeadSettings | None = None,
    progress: Callable[[dict], None] | None = None,
) -> IouHeadReport:
    """Fit ``sam``'s IoU head MLP (MSE on the outputs that ran) and keep the one that ranks the
    validation clicks best (the untouched head competes). ``sam`` is modified in place."""
    settings = settings or IouHeadSettings()
    head = sam.mask_decoder.iou_prediction_head
    report = IouHeadReport(train_prompts=len(train), val_prompts=len(val))
    report.click_dice_before, report.click_dice_oracle = ranked_first_dice(head, val)
    best_score, best_state = report.click_dice_before, copy.deepcopy(head.state_dict())
    params = list(head.parameters())
    report.trainable_params = sum(p.numel() for p in params)
    torch.manual_seed(settings.seed)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate)
    head.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(train))
        for start in range(0, len(train), settings.batch_size):
            index = order[start : start + settings.batch_size]
            predicted = head(train.features[index])
            mask = train.valid[index]
            loss = F.mse_loss(predicted[mask], train.targets[index][mask])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if (epoch + 1) % settings.validate_every == 0 or epoch + 1 == settings.epochs:
            head.eval()
            score, _ = ranked_first_dice(head, val)
            head.train()
            row = {"epoch": epoch, "loss": float(loss.detach()), "val_click_dice": score}
            report.history.append(row)
            if progress is not None:
                progress(row)
            if score > best_score:
                best_score, best_state, report.best_epoch = (
                    score,
                    copy.deepcopy(head.state_dict()),
                    epoch,
                )
    head.load_state_dict(best_state)
    head.eval()
    for param in params:
        param.requires_grad_(False)
    report.click_dice = best_score
    return report
