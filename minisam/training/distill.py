"""Distil a teacher's image encoder into a smaller student (``minisam distill``).

The student is the teacher with another image encoder: it keeps the teacher's prompt encoder and
mask decoder (copied, frozen while distilling), so its encoder must produce the teacher's embedding
grid and channels. The teacher runs once per image: its embeddings
are cached on disk under a key made of the teacher's weight hash, its input size and the image's
bytes. The loss is MSE and/or cosine distance between student and teacher embeddings; validation is
the box-prompt Dice of the student with the teacher's decoder, the quantity distillation is for.

Distillation needs no labels, so every training image can be shown in several *augmented views*
(intensity jitter and a small rotation/scale/shift, :mod:`minisam.training.augmentation`), the same
view for teacher and student ("consistent" views, as in Beyer et al. 2022, "Knowledge distillation:
a good teacher is patient and consistent"). The views are drawn once from the seed, so the teacher
still runs once per view and image, and the student learns to follow the teacher on images that
differ from the few training ones, which is where a student trained on the originals alone lags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from minisam.checkpoints import LoadedModel, save_checkpoint
from minisam.encoders import family_module
from minisam.model_config import SamConfig, build_sam, preset
from minisam.training.augmentation import augment
from minisam.training.base_trainer import validation_dice
from minisam.training.distributed import World
from minisam.training.embedding_store import EmbeddingStore, unique_images
from minisam.training.loop import (
    LoopHooks,
    ProgressCallback,
    TrainReport,
    TrainSettings,
    derived_seed,
    fit,
)
from minisam.training.model_inputs import ModelInputs


@dataclass
class DistillSettings(TrainSettings):
    """:class:`TrainSettings` plus the weights of the two embedding losses.

    ``augmented_views``: augmented copies of each distinct training image added to the originals
    (0: the originals only); a resumed run must keep it (it sets the epoch's length).
    """

    resume_keys: ClassVar[tuple[str, ...]] = (*TrainSettings.resume_keys, "augmented_views")
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    augmented_views: int = 0


def student_config(
    teacher: SamConfig, encoder: str | SamConfig, image_size: int | None = None
) -> SamConfig:
    """The teacher's configuration with the image encoder of preset (or config) ``encoder``.

    The student's encoder is fitted to what the teacher's mask decoder reads: the teacher's embedding
    grid (a ViT gets the patch size ``image_size`` / grid) and channels. ``image_size`` defaults to the
    preset's. Preprocessing stays the teacher's: the student learns the teacher's embedding of one input.
    """
    source = (preset(encoder) if isinstance(encoder, str) else encoder).encoder
    size = image_size or source.image_size
    grid = teacher.embedding_size
    family = family_module(source.family)
    fitted = family.for_grid(source.replace(out_chans=teacher.prompt_embed_dim), size, grid)
    return teacher.replace(encoder=fitted)


def build_student(teacher: LoadedModel, config: SamConfig) -> torch.nn.Module:
    """A fresh student encoder with the teacher's prompt encoder and mask decoder."""
    student = build_sam(config)
    student.prompt_encoder.load_state_dict(teacher.sam.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.sam.mask_decoder.state_dict())
    return student


class EmbeddingLoss(torch.nn.Module):
    """Sum over samples of ``mse_weight`` × MSE + ``cosine_weight`` × (1 − cosine) per location."""

    def __init__(self, student: torch.nn.Module, mse_weight: float, cosine_weight: float):
        super().__init__()
        self.student = student
        self.mse_weight = mse_weight
        self.cosine_weight = cosine_weight

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predicted = self.student.image_encoder(self.student.preprocess(images))
        mse = (predicted - targets).pow(2).flatten(1).mean(1)
        cosine = 1 - F.cosine_similarity(predicted, targets, dim=1).flatten(1).mean(1)
        return (self.mse_weight * mse + self.cosine_weight * cosine).sum()


class EmbeddingBatches:
    """Student-sized images and their teacher embeddings (no augmentation: the targets are fixed)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index, part, epoch, step, device) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = index[part]
        return self.images[chosen].to(device).float(), self.targets[chosen].to(device)


VIEW_STREAM = 7919  # separates the views' random stream from the loop's (seed, epoch, step) draws


def with_views(data: ModelInputs, chosen: torch.Tensor, views: int, seed: int) -> torch.Tensor:
    """uint8 images ``data.images[chosen]`` followed by ``views`` augmented copies of them.

    View ``v`` is drawn from (seed, v) alone and never looks at the masks, so the teacher-sized and
    the student-sized inputs of one image get the same jitter and the same geometric transform.
    """
    images = data.images[chosen]
    sizes = [data.sizes[int(i)] for i in chosen]
    whole = torch.ones((len(chosen), *images.shape[-2:]), dtype=torch.bool)
    out = [images]
    for view in range(1, views + 1):
        generator = torch.Generator().manual_seed(derived_seed(seed, VIEW_STREAM, view))
        moved, _ = augment(images, whole, generator, sizes, data.fill, geometric=1.0)
        out.append(moved.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def distill(
    teacher: LoadedModel,
    student: torch.nn.Module,
    config: SamConfig,
    train: tuple[ModelInputs, ModelInputs],
    val: ModelInputs,
    cache: EmbeddingStore,
    out: Path,
    settings: DistillSettings,
    card: dict | None = None,
    progress: ProgressCallback | None = None,
    resume_from: Path | None = None,
    world: World | None = None,
) -> TrainReport:
    """Train ``student``'s image encoder towards the teacher's embeddings; keep the best at ``out``.

    Arguments:
      train: the training samples at the teacher's and at the student's input size (same order);
        each distinct image counts once, plus ``settings.augmented_views`` augmented views of it.
      val: validation samples at the student's input size (box Dice with the teacher's decoder).
      out: the student checkpoint (the last weights, also after a cancel); its resume file
        :func:`distill_resume_file` stays while the run is unfinished.
    """
    teacher_inputs, student_inputs = train
    chosen = unique_images(student_inputs)
    views = settings.augmented_views
    targets = cache(with_views(teacher_inputs, chosen, views, settings.seed))
    student_images = with_views(student_inputs, chosen, views, settings.seed)
    for module in (student.prompt_encoder, student.mask_decoder):
        module.requires_grad_(False)
    params = {f"image_encoder.{n}": p for n, p in student.image_encoder.named_parameters()}

    report, _ = fit(
        EmbeddingLoss(student, settings.mse_weight, settings.cosine_weight),
        EmbeddingBatches(student_images, targets),
        params,
        lambda: validation_dice(student, val, config),
        settings,
        LoopHooks(progress=progress),
        state_file=distill_resume_file(out),
        resume_from=resume_from,
        world=world,
    )
    for module in (student.prompt_encoder, student.mask_decoder):
        module.requires_grad_(True)
    # The last weights, not the best-validated ones: the targets are fixed, the loss falls steadily,
    # and box Dice on a small validation set is too noisy to choose epochs by.
    last = report.history[-1]["val_dice"] if report.history else float("nan")
    meta = dict(card or {}, val_dice=round(last, 4), epochs=len(report.history), trained=True)
    if world is None or world.is_main:
        save_checkpoint(student, config, out, card=meta)
    return report


def embedding_error(student: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Relative error ||student − teacher|| / ||teacher|| of the embeddings of student-sized images."""
    student.eval()
    with torch.inference_mode():
        predicted = student.image_encoder(student.preprocess(images.float()))
    return float((predicted - targets).norm() / targets.norm())


def distill_resume_file(out: Path) -> Path:
    """The resume file of the distillation phase writing ``out`` (fine-tuning has its own)."""
    return Path(out).with_suffix(".distill.resume.pt")
