"""SAM's training objective as a module: best-of-K Dice + focal loss on masks, MSE on the IoU head.

A module (not a function) so that DistributedDataParallel can wrap one training step: its forward
runs the image encoder on a batch and the prompt encoder and mask decoder once per sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from minisam.model_config import SamConfig
from minisam.prompts import Prompt
from minisam.training.loop import derived_seed
from minisam.training.model_inputs import ModelInputs, augment
from minisam.training.prompt_simulation import random_prompt


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


def hard_iou(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of each thresholded mask (K, S, S) with ``truth``: the IoU head's regression target."""
    pred = logits > 0
    inter = (pred & truth).flatten(1).sum(1).float()
    union = (pred | truth).flatten(1).sum(1).float().clamp(min=1)
    return inter / union


class PromptedMaskLoss(torch.nn.Module):
    """Sum over a batch of each sample's loss for its simulated prompt.

    A point prompt is ambiguous, so SAM predicts three masks and only the best one is penalised
    (multimask), a box gets one mask. The IoU head learns the hard IoU of every predicted mask.
    """

    def __init__(self, sam: torch.nn.Module, config: SamConfig, iou_loss_weight: float = 1.0):
        super().__init__()
        self.sam = sam
        self.image_size = config.image_size
        self.iou_loss_weight = iou_loss_weight
        self.dice_focal = DiceFocalLoss(sigmoid=True)

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor, prompts: list[Prompt]
    ) -> torch.Tensor:
        """``images`` (B, 3, S, S) 0..255 floats, ``masks`` (B, S, S) bool, one prompt per sample."""
        features = self.sam.image_encoder(self.sam.preprocess(images))
        total = features.new_zeros(())
        for j, prompt in enumerate(prompts):
            truth = masks[j]
            logits, iou = decode(self.sam, features[j], prompt, prompt.box is None, self.image_size)
            target = truth[None, None].float()
            per_mask = torch.stack(
                [self.dice_focal(logits[k][None, None], target) for k in range(len(logits))]
            )
            iou_target = hard_iou(logits.detach(), truth[None].expand_as(logits))
            total = total + per_mask.min() + self.iou_loss_weight * F.mse_loss(iou, iou_target)
        return total


class SimulatedPromptBatches:
    """Batches for :class:`PromptedMaskLoss`: intensity-augmented images, masks, simulated prompts."""

    def __init__(self, data: ModelInputs, seed: int, box_probability: float) -> None:
        self.data = data
        self.seed = seed
        self.box_probability = box_probability

    def __len__(self) -> int:
        return len(self.data)

    def batch(
        self, index: torch.Tensor, part: torch.Tensor, epoch: int, step: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, list[Prompt]]:
        """Augmentation seeded by (seed, epoch, step), each sample's prompt by (seed, epoch, sample)."""
        augment_rng = torch.Generator().manual_seed(derived_seed(self.seed, epoch, step))
        images, masks = augment(self.data.images[index], self.data.masks[index], augment_rng)
        prompts = [
            random_prompt(
                masks[int(j)].numpy(),
                np.random.default_rng([self.seed, epoch, int(index[j])]),
                self.box_probability,
            )
            for j in part
        ]
        return images[part].to(device), masks[part].to(device), prompts
