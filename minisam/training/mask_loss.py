"""SAM's training objective as a module: best-of-K Dice + focal loss on masks, MSE on the IoU head.

A module (not a function) so that DistributedDataParallel can wrap one training step: its forward
runs the image encoder on a batch and the prompt encoder and mask decoder once per sample.
As in SAM's interactive training, each sample can get corrective clicks: after a prediction, one
point is sampled from its error region (positive in missed foreground, negative in false
positives), added to the prompt together with the previous low-resolution mask logits, and the
decoder runs again; the loss is the mean over the rounds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from minisam.model_config import SamConfig
from minisam.prompts import Prompt
from minisam.training.augmentation import augment
from minisam.training.loop import derived_seed
from minisam.training.model_inputs import ModelInputs
from minisam.training.prompt_simulation import correction_click, random_prompt


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
    sam: torch.nn.Module,
    features: torch.Tensor,
    prompt: Prompt,
    multimask: bool,
    image_size: int,
    mask_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one image: mask logits at the padded model-input resolution (K, S, S), predicted IoU
    (K,) and the decoder's low-resolution logits (K, 4g, 4g), the next round's ``mask_input``."""
    points, box = _prompt_tensors(prompt, features.device)
    masks = None if mask_input is None else mask_input[None, None]
    sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=masks)
    low_res, iou = sam.mask_decoder(
        image_embeddings=features[None],
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    logits = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    return logits[0], iou[0], low_res[0]


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
    With ``correction_clicks`` > 0 each sample then gets that many corrective rounds (one mask
    each, fed the previous round's best low-resolution logits, not back-propagated through).
    ``precomputed``: the batches carry image embeddings of a frozen encoder instead of images, so
    only the prompt encoder and mask decoder run (and train).
    ``anchor``: a frozen copy of the model before training; with ``anchor_weight`` > 0 every box
    prompt's first mask is also pulled toward the anchor's (Dice + focal loss of the low-resolution
    logits against the anchor's mask, weighted relative to the truth's), so that learning clicks keeps
    what boxes gave.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        config: SamConfig,
        iou_loss_weight: float = 1.0,
        correction_clicks: int = 0,
        precomputed: bool = False,
        anchor: torch.nn.Module | None = None,
        anchor_weight: float = 0.0,
    ):
        super().__init__()
        self.precomputed = precomputed
        self.sam = sam
        self.anchor = anchor if anchor_weight > 0 else None
        self.anchor_weight = anchor_weight
        self.image_size = config.image_size
        self.iou_loss_weight = iou_loss_weight
        self.correction_clicks = correction_clicks
        self.dice_focal = DiceFocalLoss(sigmoid=True)

    def forward(
        self,
        inputs: torch.Tensor,
        masks: torch.Tensor,
        prompts: list[Prompt],
        click_seeds: list[int] | None = None,
    ) -> torch.Tensor:
        """``inputs`` (B, 3, S, S) 0..255 float images, or their image embeddings (B, C, g, g) when
        the module is ``precomputed``; ``masks`` (B, S, S) bool, one prompt per sample;
        ``click_seeds`` seed each sample's corrective clicks (needed when there are any)."""
        if self.precomputed:
            features = inputs
        else:
            features = self.sam.image_encoder(self.sam.preprocess(inputs))
        total = features.new_zeros(())
        for j, prompt in enumerate(prompts):
            truth = masks[j]
            mask_input = None
            rng = np.random.default_rng(click_seeds[j]) if self.correction_clicks else None
            rounds = []
            for round_index in range(self.correction_clicks + 1):
                multimask = round_index == 0 and prompt.box is None
                logits, iou, low_res = decode(
                    self.sam, features[j], prompt, multimask, self.image_size, mask_input
                )
                loss, best = self._mask_loss(logits, iou, truth)
                if round_index == 0 and prompt.box is not None and self.anchor is not None:
                    loss = loss + self.anchor_weight * self._anchor_loss(
                        features[j], prompt, low_res
                    )
                rounds.append(loss)
                if round_index == self.correction_clicks:
                    break
                predicted = (logits[best].detach() > 0).cpu().numpy()
                click = correction_click(truth.cpu().numpy(), predicted, rng)
                if click is None:  # already perfect: nothing to correct
                    break
                prompt = prompt.with_point(*click)
                mask_input = low_res[best].detach()
            total = total + torch.stack(rounds).mean()
        return total

    def _anchor_loss(
        self, features: torch.Tensor, prompt: Prompt, low_res: torch.Tensor
    ) -> torch.Tensor:
        """Dice + focal loss of a box's low-resolution logits against the anchor model's mask."""
        with torch.no_grad():
            _, _, reference = decode(self.anchor, features, prompt, False, self.image_size)
        return self.dice_focal(low_res[None], (reference > 0).float()[None])

    def _mask_loss(
        self, logits: torch.Tensor, iou: torch.Tensor, truth: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """(best-of-K Dice + focal + weighted IoU-head MSE, index of the best mask)."""
        target = truth[None, None].float()
        per_mask = torch.stack(
            [self.dice_focal(logits[k][None, None], target) for k in range(len(logits))]
        )
        iou_target = hard_iou(logits.detach(), truth[None].expand_as(logits))
        best = int(per_mask.argmin())
        return per_mask[best] + self.iou_loss_weight * F.mse_loss(iou, iou_target), best


class SimulatedPromptBatches:
    """Batches for :class:`PromptedMaskLoss`: augmented images, masks, simulated prompts, click seeds.

    ``geometric``: share of samples given a random affine transform (see
    :mod:`minisam.training.augmentation`); every sample gets intensity jitter.
    """

    def __init__(
        self, data: ModelInputs, seed: int, box_probability: float, geometric: float = 0.0
    ) -> None:
        self.data = data
        self.seed = seed
        self.box_probability = box_probability
        self.geometric = geometric

    def __len__(self) -> int:
        return len(self.data)

    def batch(
        self, index: torch.Tensor, part: torch.Tensor, epoch: int, step: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, list[Prompt], list[int]]:
        """Augmentation seeded by (seed, epoch, step), each sample's prompt and clicks by (seed,
        epoch, sample)."""
        augment_rng = torch.Generator().manual_seed(derived_seed(self.seed, epoch, step))
        images, masks = augment(
            self.data.images[index],
            self.data.masks[index],
            augment_rng,
            sizes=[self.data.sizes[int(i)] for i in index],
            fill=self.data.fill,
            geometric=self.geometric,
        )
        prompts = [
            random_prompt(
                masks[int(j)].numpy(),
                np.random.default_rng([self.seed, epoch, int(index[j])]),
                self.box_probability,
            )
            for j in part
        ]
        click_seeds = [derived_seed(self.seed, epoch, int(index[j]), 1) for j in part]
        return images[part].to(device), masks[part].to(device), prompts, click_seeds


class EmbeddedPromptBatches:
    """Batches for a ``precomputed`` :class:`PromptedMaskLoss`: cached image embeddings, masks,
    simulated prompts and click seeds.

    The embeddings are fixed, so there is no image augmentation: the prompts vary instead (a new
    jittered box or set of clicks for every sample in every epoch, then corrective clicks).
    """

    def __init__(
        self, embeddings: torch.Tensor, masks: torch.Tensor, seed: int, box_probability: float
    ) -> None:
        if len(embeddings) != len(masks):
            raise ValueError(f"{len(embeddings)} embeddings for {len(masks)} masks")
        self.embeddings = embeddings
        self.masks = masks
        self.seed = seed
        self.box_probability = box_probability

    def __len__(self) -> int:
        return len(self.masks)

    def batch(
        self, index: torch.Tensor, part: torch.Tensor, epoch: int, step: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, list[Prompt], list[int]]:
        """Each sample's prompt and clicks seeded by (seed, epoch, sample), as in
        :class:`SimulatedPromptBatches`."""
        chosen = index[part]
        prompts = [
            random_prompt(
                self.masks[int(i)].numpy(),
                np.random.default_rng([self.seed, epoch, int(i)]),
                self.box_probability,
            )
            for i in chosen
        ]
        click_seeds = [derived_seed(self.seed, epoch, int(i), 1) for i in chosen]
        return (
            self.embeddings[chosen].to(device),
            self.masks[chosen].to(device),
            prompts,
            click_seeds,
        )
