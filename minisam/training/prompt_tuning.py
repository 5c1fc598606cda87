"""Teach a frozen-encoder SAM to answer other prompts, on cached image embeddings.

LiteMedSAM was trained with boxes only: one click gives almost nothing. Its image encoder stays
frozen here, so every training slice is embedded once (:mod:`minisam.training.embedding_store`) and
only the prompt path learns: the prompt encoder and mask decoder in full (``method="full"``), or a
LoRA adapter on the mask decoder's transformer (``method="lora"``, merged into the weights at the
end). The prompts are simulated SAM-style interactive sessions: a jittered box or one to three
clicks (sometimes a negative one), multimask for single clicks, then corrective clicks drawn from the
error region, each round fed the previous round's mask logits (:mod:`minisam.training.mask_loss`).

The model is selected on the mean of its box and one-click validation Dice, so learning clicks
cannot silently cost box quality; both are reported before and after.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from minisam.adapters.lora import AdapterSpec, adapter_parameters, attach_adapter
from minisam.checkpoints import LoadedModel
from minisam.errors import InputError
from minisam.training.base_trainer import validation_dice
from minisam.training.loop import (
    LoopHooks,
    ProgressCallback,
    TrainReport,
    TrainSettings,
    fit,
    restore,
)
from minisam.training.mask_loss import EmbeddedPromptBatches, PromptedMaskLoss
from minisam.training.model_inputs import ModelInputs

METHODS = ("full", "lora")


@dataclass
class PromptTuningSettings(TrainSettings):
    """:class:`TrainSettings` for the prompt path.

    Arguments:
      method: "full" (prompt encoder + mask decoder) or "lora" (rank-``rank`` LoRA on the decoder
        transformer's attention projections, merged after training).
      box_anchor: weight of the pull of box masks toward the starting model's (0: none).
    """

    epochs: int = 12
    batch_size: int = 8
    learning_rate: float = 1e-4
    box_probability: float = 0.4
    correction_clicks: int = 2
    patience: int | None = 4
    geometric_augmentation: float = 0.0
    method: str = "full"
    rank: int = 16
    box_anchor: float = 0.0  # > 0: box masks pulled toward the starting model's (PromptedMaskLoss)


@dataclass
class PromptTuningReport(TrainReport):
    """What :func:`tune_prompt_path` did, with box and one-click validation Dice before and after."""

    method: str = "full"
    box_dice_before: float = float("nan")
    click_dice_before: float = float("nan")
    box_dice: float = float("nan")
    click_dice: float = float("nan")
    trainable_params: int = 0
    train_samples: int = 0
    val_samples: int = 0


def _trainable(loaded: LoadedModel, settings: PromptTuningSettings):
    """(module whose parameters train, their dict by name, finish()) for the chosen method."""
    sam = loaded.sam
    if settings.method == "full":
        for name, param in sam.named_parameters():
            param.requires_grad_(name.startswith(("prompt_encoder.", "mask_decoder.")))
        params = {n: p for n, p in sam.named_parameters() if p.requires_grad}
        return sam, params, lambda: sam
    spec = AdapterSpec(
        method="lora",
        rank=settings.rank,
        alpha=2.0 * settings.rank,
        target_modules=(),
        include_decoder=True,
    )
    model = attach_adapter(sam, spec, "prompts")
    params = adapter_parameters(model, "prompts")
    return sam, params, lambda: model.merge_and_unload()


def _frozen_prompt_path(sam: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``sam``'s prompt encoder and mask decoder (the anchor of box masks)."""
    anchor = torch.nn.Module()
    anchor.prompt_encoder = copy.deepcopy(sam.prompt_encoder).eval()
    anchor.mask_decoder = copy.deepcopy(sam.mask_decoder).eval()
    for param in anchor.parameters():
        param.requires_grad_(False)
    return anchor


def tune_prompt_path(
    loaded: LoadedModel,
    train: ModelInputs,
    val: ModelInputs,
    train_embeddings: torch.Tensor,
    val_embeddings: torch.Tensor,
    settings: PromptTuningSettings | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[torch.nn.Module, PromptTuningReport]:
    """Train ``loaded``'s prompt path on the cached embeddings of ``train`` and keep the best.

    Returns the model with the best weights in place (a plain ``Sam``: a LoRA is merged) and the
    report. ``loaded.sam`` is modified in place.
    """
    settings = settings or PromptTuningSettings()
    if settings.method not in METHODS:
        raise InputError(f"prompt tuning method must be one of {METHODS}, not {settings.method!r}")
    if not len(train) or not len(val):
        raise InputError(
            f"prompt tuning needs training and validation samples ({len(train)}, {len(val)})"
        )
    config = loaded.config

    def scores() -> tuple[float, float]:
        box = validation_dice(loaded.sam, val, config, prompt="box", embeddings=val_embeddings)
        click = validation_dice(loaded.sam, val, config, prompt="click", embeddings=val_embeddings)
        return box, click

    report = PromptTuningReport(method=settings.method)
    report.box_dice_before, report.click_dice_before = scores()
    torch.manual_seed(settings.seed)
    anchor = _frozen_prompt_path(loaded.sam) if settings.box_anchor > 0 else None
    sam, params, finish = _trainable(loaded, settings)
    loss = PromptedMaskLoss(
        sam, config, settings.iou_loss_weight, settings.correction_clicks, precomputed=True,
        anchor=anchor, anchor_weight=settings.box_anchor,
    )  # fmt: skip
    batches = EmbeddedPromptBatches(
        train_embeddings, train.masks, settings.seed, settings.box_probability
    )
    loop_report, best = fit(
        loss,
        batches,
        params,
        lambda: sum(scores()) / 2,
        settings,
        LoopHooks(progress=progress),
        baseline=True,
    )
    restore(params, best)
    model = finish().eval()
    for param in model.parameters():
        param.requires_grad_(False)
    loaded.sam = model
    for key, value in vars(loop_report).items():
        setattr(report, key, value)
    report.box_dice, report.click_dice = scores()
    report.trainable_params = sum(p.numel() for p in params.values())
    report.train_samples, report.val_samples = len(train), len(val)
    return model, report
