"""Training inputs as inference sees them, geometric augmentation, and SAM-style corrective clicks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minisam.engine import SamEngine
from minisam.model_loader import load_model
from minisam.prompts import Prompt, mask_bounding_box
from minisam.training.augmentation import augment
from minisam.training.mask_loss import PromptedMaskLoss
from minisam.training.model_inputs import to_model_inputs
from minisam.training.slice_samples import samples_from_pairs

HC18 = "hc18_fetal_head_us"


@pytest.fixture(scope="module")
def ultrasound(shared_data: Path):
    """(random tiny model, its inputs for two non-square HC18 slices, the samples)."""
    root = shared_data / HC18
    images = sorted((root / "images").glob("*.png"))[:2]
    pairs = [(p, root / "masks_filled" / p.name.replace(".png", "_mask.png")) for p in images]
    samples = samples_from_pairs(pairs, "hc18", "us")
    loaded = load_model("random:tiny", seed=0)
    return loaded, to_model_inputs(samples, loaded.config), samples


def test_training_inputs_encode_like_inference_on_a_non_square_slice(ultrasound) -> None:
    loaded, inputs, samples = ultrasound
    (h, w), size = inputs.sizes[0], loaded.config.image_size
    assert h < size and w == size  # an ~800 x 540 slice: padded at the bottom
    sam = loaded.sam.eval()
    with torch.inference_mode():
        normalised = sam.preprocess(inputs.images[:1].float())
        trained_on = sam.image_encoder(normalised)
    # The padding normalises to ~0, as SamEngine.embed's padding after normalisation does.
    assert normalised[0, :, h:, :].abs().max() < 0.02
    at_inference = SamEngine(sam, loaded.config).embed(samples[0].image).features
    error = float((trained_on - at_inference).norm() / at_inference.norm())
    # Measured: 0.028 (uint8 rounding of the resized slice); black padding gave 0.69 (0.44 with
    # the trained default), i.e. every non-square training slice looked unlike inference.
    assert error < 0.05, f"training and inference embeddings differ by {error:.3f}"


def test_geometric_augmentation_moves_image_and_mask_together(ultrasound) -> None:
    _, inputs, _ = ultrasound
    images, masks = inputs.images, inputs.masks
    plain, plain_masks = augment(images, masks, torch.Generator().manual_seed(0), inputs.sizes,
                                 inputs.fill, geometric=0.0)  # fmt: skip
    assert torch.equal(plain_masks, masks)
    moved, moved_masks = augment(images, masks, torch.Generator().manual_seed(0), inputs.sizes,
                                 inputs.fill, geometric=1.0)  # fmt: skip
    again, _ = augment(images, masks, torch.Generator().manual_seed(0), inputs.sizes,
                       inputs.fill, geometric=1.0)  # fmt: skip
    assert torch.equal(moved, again), "augmentation must be reproducible from its generator"
    fill = torch.tensor(inputs.fill)[:, None]
    for j, (h, w) in enumerate(inputs.sizes):
        area, moved_area = int(masks[j].sum()), int(moved_masks[j].sum())
        assert not torch.equal(moved_masks[j], masks[j]), "geometry did not change"
        assert 0.7 * area < moved_area < 1.35 * area  # scale within ±10 %
        # Nothing moves into the padding, which keeps the padding colour.
        assert not moved_masks[j, h:, :].any() and not moved_masks[j, :, w:].any()
        assert torch.allclose(moved[j, :, h:, :].reshape(3, -1), fill.expand(3, -1))
        # The head (bright ellipse outline and content) stays under its mask: the mean intensity
        # inside the moved mask is that inside the original one, not that of the background.
        inside = plain[j][:, masks[j]].mean()
        moved_inside = moved[j][:, moved_masks[j]].mean()
        outside = plain[j][:, ~masks[j]][:, : h * w].mean()
        assert abs(moved_inside - inside) < 0.25 * abs(inside - outside)


def test_corrective_clicks_add_an_error_point_and_the_previous_logits(ultrasound) -> None:
    loaded, inputs, _ = ultrasound
    sam = loaded.sam
    calls = []
    original = sam.prompt_encoder.forward

    def recording(points, boxes, masks):
        calls.append((None if points is None else points[0][0].clone(), masks))
        return original(points=points, boxes=boxes, masks=masks)

    sam.prompt_encoder.forward = recording
    try:
        loss = PromptedMaskLoss(sam, loaded.config, correction_clicks=2)
        truth = inputs.masks[0]
        box = mask_bounding_box(truth.numpy())
        value = loss(inputs.images[:1].float(), inputs.masks[:1], [Prompt(box=box)], [7])
    finally:
        sam.prompt_encoder.forward = original
    assert torch.isfinite(value) and value.requires_grad
    assert len(calls) == 3  # first prompt + two corrective rounds (a random model is never perfect)
    assert calls[0] == (None, None)
    for round_index in (1, 2):
        points, mask_input = calls[round_index]
        assert points.shape[0] == round_index and mask_input is not None
        assert tuple(mask_input.shape[-2:]) == tuple(sam.prompt_encoder.mask_input_size)
    value.backward()
    grads = [p.grad for p in sam.mask_decoder.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
