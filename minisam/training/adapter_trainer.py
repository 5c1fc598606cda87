"""Train a LoRA / AdaLoRA adapter on a frozen (by default NF4-quantized) SAM base: QLoRA.

The base is quantized first (its fp32 hash is recorded before any layer changes), then the adapter is
attached; only the adapter's parameters get gradients. On CPU the NF4 layers run with the
"dequantize" strategy by default: fp32 copies computed once from the stored 4-bit weights, so the
forward pass sees exactly the quantized weights (QLoRA semantics) with ordinary autograd.
Loss, prompts, augmentation, resume and torchrun support are those of :mod:`minisam.training.loop`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel

from minisam.adapters.lora import (
    DECODER_TARGETS,
    ENCODER_TARGETS,
    AdapterSpec,
    adapter_parameters,
    attach_adapter,
)
from minisam.checkpoints import LoadedModel
from minisam.errors import InputError, ModelError
from minisam.quantization import QuantScheme, parse_scheme, quantize_model
from minisam.training.base_trainer import validation_dice
from minisam.training.distributed import World
from minisam.training.embedding_store import encode
from minisam.training.loop import (
    LoopHooks,
    ProgressCallback,
    TrainReport,
    TrainSettings,
    fit,
    restore,
)
from minisam.training.mask_loss import (
    EmbeddedPromptBatches,
    PromptedMaskLoss,
    SimulatedPromptBatches,
)
from minisam.training.model_inputs import to_model_inputs
from minisam.training.slice_samples import SliceSample


@dataclass
class AdapterTrainSettings(TrainSettings):
    """:class:`TrainSettings` with few-shot defaults and the CPU strategy of the quantized base.

    ``validation_prompt``: what picks the best epoch: "box" (exact box Dice), "click" (one click at
    the most interior pixel, answered as the engine answers a lone click: refined with its best
    candidate's box) or "both" (their mean), so an adapter for clicks is chosen on clicks.
    """

    epochs: int = 20
    batch_size: int = 4
    learning_rate: float = 1e-3
    patience: int | None = 4
    warmup_fraction: float = 0.1
    cpu_strategy: str = "dequantize"
    validation_prompt: str = "box"


@dataclass
class AdapterTrainReport(TrainReport):
    """What :func:`train_adapter` did; ``best_epoch`` -1 means the identity adapter stayed best."""

    zero_shot_val_dice: float = float("nan")
    base_hash: str = ""
    quant: str = "fp32"
    trainable_params: int = 0
    train_slices: int = 0
    val_slices: int = 0
    extra: dict = field(default_factory=dict)


def adapter_spec(
    method: str,
    rank: int,
    steps: int,
    *,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ENCODER_TARGETS,
    include_decoder: bool = False,
    decoder_target_modules: Sequence[str] = DECODER_TARGETS,
) -> AdapterSpec:
    """The spec of a training run of ``steps`` optimiser steps, as ``minisam train-adapter`` builds it.

    Arguments:
      method: "lora", or "adalora" / "adalora-qat" (AdaLoRA, its rank budget starting at 1.5 x
        ``rank`` and its schedule scaled to ``steps``).
      rank: LoRA rank, AdaLoRA's target rank.
      alpha: LoRA scaling numerator (default 2 x ``rank``).
      dropout, target_modules, include_decoder, decoder_target_modules: see :class:`AdapterSpec`.
    """
    adalora = method in ("adalora", "adalora-qat")
    return AdapterSpec(
        method="adalora" if adalora else "lora",
        rank=rank,
        alpha=2.0 * rank if alpha is None else alpha,
        dropout=dropout,
        target_modules=tuple(target_modules),
        include_decoder=include_decoder,
        decoder_target_modules=tuple(decoder_target_modules),
        init_r=max(rank, round(1.5 * rank)),
        target_r=rank,
        tinit=steps // 10 if adalora else 0,
        tfinal=steps // 5 if adalora else 0,
        total_step=steps if adalora else None,
    )


def train_adapter(
    loaded: LoadedModel,
    train_samples: list[SliceSample],
    val_samples: list[SliceSample],
    spec: AdapterSpec,
    settings: AdapterTrainSettings | None = None,
    quant: str = "nf4",
    progress: ProgressCallback | None = None,
    name: str = "default",
    state_file: Path | None = None,
    resume_from: Path | None = None,
    world: World | None = None,
) -> tuple[PeftModel, AdapterTrainReport]:
    """Quantize ``loaded`` (unless ``quant`` is "fp32"), attach adapter ``name`` and train it.

    Validates (``settings.validation_prompt``: exact-box Dice by default) on ``val_samples`` before
    training and after every epoch, keeps the
    best adapter weights (the identity adapter counts as epoch -1), stops after ``patience`` epochs
    without improvement, on ``max_minutes`` or when ``progress`` returns False (then the best
    weights so far are restored, so the adapter stays usable; ``state_file`` keeps what
    ``resume_from`` needs to continue). ``loaded.sam`` is modified in place.
    """
    settings = settings or AdapterTrainSettings()
    scheme = check_quant(quant)
    if not train_samples or not val_samples:
        raise InputError(
            f"adapter training needs training and validation slices "
            f"(got {len(train_samples)} and {len(val_samples)})"
        )
    base_hash = loaded.base_hash()
    if scheme.groups:
        quantize_model(loaded, scheme, cpu_strategy=settings.cpu_strategy)
    torch.manual_seed(settings.seed)
    model = attach_adapter(loaded.sam, spec, name)
    report = fit_adapter(
        model, name, loaded, train_samples, val_samples, settings, progress,
        budget=True, state_file=state_file, resume_from=resume_from, world=world,
    )  # fmt: skip
    report.base_hash, report.quant = base_hash, quant
    return model, report


def check_quant(quant: str) -> QuantScheme:
    """The base model's quantization: "fp32", "nf4", "int8" or a per-group scheme."""
    try:
        return parse_scheme(quant)
    except ModelError as exc:
        raise InputError(f"--quant: {exc}") from None


def fit_adapter(
    model: PeftModel,
    name: str,
    loaded: LoadedModel,
    train_samples: list[SliceSample],
    val_samples: list[SliceSample],
    settings: AdapterTrainSettings,
    progress: ProgressCallback | None,
    budget: bool,
    state_file: Path | None = None,
    resume_from: Path | None = None,
    world: World | None = None,
) -> AdapterTrainReport:
    """Train adapter ``name`` of ``model`` (on ``loaded.sam``) and leave its best weights in place.

    ``budget``: let AdaLoRA re-allocate ranks while training (off for a fixed-rank second stage).
    A decoder-only adapter leaves the (frozen, maybe quantized) encoder's output unchanged, so every
    slice is embedded once and the steps run the prompt encoder and mask decoder only (no image
    augmentation then: the prompts vary instead).
    """
    config, sam = loaded.config, loaded.sam
    params = adapter_parameters(model, name)
    train = to_model_inputs(train_samples, config)
    val = to_model_inputs(val_samples, config)
    hooks = LoopHooks(progress=progress, **(_adalora_hooks(model) if budget else {}))
    val_embeddings = None
    if encoder_is_frozen(params):  # embed every slice once; only the decoder side runs per step
        train_embeddings, val_embeddings = encode(sam, train.images), encode(sam, val.images)
        step_loss = PromptedMaskLoss(
            sam, config, settings.iou_loss_weight, settings.correction_clicks, precomputed=True
        )
        batches = EmbeddedPromptBatches(
            train_embeddings, train.masks, settings.seed, settings.box_probability
        )
    else:
        step_loss = PromptedMaskLoss(
            sam, config, settings.iou_loss_weight, settings.correction_clicks
        )
        batches = SimulatedPromptBatches(
            train, settings.seed, settings.box_probability, settings.geometric_augmentation
        )

    def validate() -> float:
        prompts = ("box", "click") if settings.validation_prompt == "both" else (
            settings.validation_prompt,
        )  # fmt: skip
        return sum(
            validation_dice(sam, val, config, prompt=p, embeddings=val_embeddings) for p in prompts
        ) / len(prompts)

    loop_report, best = fit(
        step_loss,
        batches,
        params,
        validate,
        settings,
        hooks,
        baseline=True,
        state_file=state_file,
        resume_from=resume_from,
        world=world,
    )
    restore(params, best)
    if budget:
        _reapply_rank_pattern(model)
    model.eval()
    report = AdapterTrainReport(**vars(loop_report))
    report.zero_shot_val_dice = loop_report.baseline_val_dice
    report.trainable_params = sum(p.numel() for p in params.values())
    report.train_slices, report.val_slices = len(train), len(val)
    report.extra["frozen_encoder_cached"] = val_embeddings is not None
    return report


def encoder_is_frozen(params: dict[str, torch.nn.Parameter]) -> bool:
    """True when no trainable parameter lives in the image encoder (a decoder-only adapter)."""
    return not any(".image_encoder." in f".{key}" for key in params)


def _adalora_hooks(model: PeftModel) -> dict:
    """AdaLoRA's rank budget: update after each step; its importance scores and the rank pattern
    allocated so far (which the steps after the final allocation mask with) in the resume file."""
    if model.peft_type.value != "ADALORA":
        return {}
    tuner = model.base_model
    config = tuner.peft_config[tuner.trainable_adapter_name]
    keys = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def state() -> dict:
        allocator = tuner.rankallocator
        saved = {k: {n: t.clone() for n, t in getattr(allocator, k).items()} for k in keys}
        saved["rank_pattern"] = copy.deepcopy(config.rank_pattern)
        return saved

    def load(saved: dict) -> None:
        for key in keys:
            getattr(tuner.rankallocator, key).update(saved.get(key, {}))
        if saved.get("rank_pattern") is not None:
            config.rank_pattern = saved["rank_pattern"]

    return {
        "after_step": tuner.update_and_allocate,
        "extra_state": state,
        "load_extra_state": load,
    }


def _reapply_rank_pattern(model: PeftModel) -> None:
    """Best weights from an earlier epoch: re-apply AdaLoRA's final rank budget so saving drops the
    same ranks."""
    config = model.peft_config[model.active_adapter]
    if getattr(config, "rank_pattern", None):
        tuner = model.base_model
        tuner.rankallocator.mask_using_rank_pattern(tuner.model, config.rank_pattern)
