"""Teaching a frozen-encoder model clicks on cached embeddings (minisam.training.prompt_tuning)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_files import SMALL_MODEL

from minisam.adapters.lora import AdapterSpec, attach_adapter, target_module_names
from minisam.errors import PromptError
from minisam.metrics import dice
from minisam.model_loader import load_model
from minisam.prompts import interior_point
from minisam.training.base_trainer import validation_dice
from minisam.training.embedding_store import EmbeddingStore, embeddings_of
from minisam.training.iou_head_tuning import IouHeadSettings, head_samples, tune_iou_head
from minisam.training.model_inputs import to_model_inputs
from minisam.training.prompt_tuning import PromptTuningSettings, tune_prompt_path
from minisam.training.slice_samples import samples_from_pairs

HC18 = "hc18_fetal_head_us"


def _hc18(shared_data: Path, start: int, count: int) -> list:
    root = shared_data / HC18
    images = sorted((root / "images").glob("*.png"))[start : start + count]
    pairs = [(i, root / "masks_filled" / f"{i.stem}_mask.png") for i in images]
    return samples_from_pairs(pairs, HC18, "us")


@pytest.fixture(scope="module")
def fetal_heads(shared_data: Path, tmp_path_factory) -> dict:
    """The default model's inputs and cached embeddings of 10 training and 4 other fetal heads."""
    base = load_model(SMALL_MODEL)
    store = EmbeddingStore(base, tmp_path_factory.mktemp("embeddings"))
    train = to_model_inputs(_hc18(shared_data, 0, 10), base.config)
    val = to_model_inputs(_hc18(shared_data, 40, 4), base.config)
    return {
        "train": train,
        "val": val,
        "train_embeddings": embeddings_of(store, train),
        "val_embeddings": embeddings_of(store, val),
        "store": store,
    }


def test_full_tuning_teaches_clicks_and_leaves_the_encoder_alone(fetal_heads: dict) -> None:
    loaded = load_model(SMALL_MODEL)
    encoder_before = {k: v.clone() for k, v in loaded.sam.image_encoder.state_dict().items()}
    settings = PromptTuningSettings(epochs=6, batch_size=5, learning_rate=1e-3, patience=None)
    model, report = tune_prompt_path(
        loaded, fetal_heads["train"], fetal_heads["val"], fetal_heads["train_embeddings"],
        fetal_heads["val_embeddings"], settings,
    )  # fmt: skip
    # One click on a fetal head the prompt path never saw: the default answers it poorly at first.
    assert report.click_dice > report.click_dice_before + 0.15, report
    assert report.box_dice > report.box_dice_before - 0.05, report
    assert report.best_epoch >= 0 and report.trainable_params > 0
    assert all(
        torch.equal(v, model.image_encoder.state_dict()[k]) for k, v in encoder_before.items()
    )
    assert not any(p.requires_grad for p in model.parameters())


def test_lora_tuning_is_merged_into_a_plain_model(fetal_heads: dict) -> None:
    loaded = load_model(SMALL_MODEL)
    decoder_before = {k: v.clone() for k, v in loaded.sam.mask_decoder.state_dict().items()}
    settings = PromptTuningSettings(
        method="lora", rank=4, epochs=2, batch_size=5, learning_rate=1e-3, patience=None
    )
    model, report = tune_prompt_path(
        loaded, fetal_heads["train"], fetal_heads["val"], fetal_heads["train_embeddings"],
        fetal_heads["val_embeddings"], settings,
    )  # fmt: skip
    assert type(model).__name__ == "Sam"
    assert set(model.mask_decoder.state_dict()) == set(decoder_before)  # no lora_A / lora_B left
    changed = [
        k
        for k, v in decoder_before.items()
        if not torch.equal(v, model.mask_decoder.state_dict()[k])
    ]
    if report.best_epoch >= 0:
        assert changed and all("transformer" in k for k in changed)
    else:  # the untouched decoder stayed best: then nothing may have changed
        assert not changed


def test_iou_head_tuning_changes_the_ranking_not_the_masks(fetal_heads: dict) -> None:
    loaded = load_model(SMALL_MODEL)
    before = {k: v.clone() for k, v in loaded.sam.state_dict().items()}
    settings = IouHeadSettings(prompts_per_image=4, epochs=40, validate_every=5, learning_rate=1e-2)
    samples = {
        name: head_samples(
            loaded.sam,
            loaded.config,
            fetal_heads[f"{name}_embeddings"],
            fetal_heads[name].masks,
            settings,
        )  # fmt: skip
        for name in ("train", "val")
    }
    assert samples["train"].lone_clicks.any() and (~samples["train"].lone_clicks).any()
    box_before = validation_dice(
        loaded.sam, fetal_heads["val"], loaded.config, embeddings=fetal_heads["val_embeddings"]
    )
    report = tune_iou_head(loaded.sam, samples["train"], samples["val"], settings)
    after = loaded.sam.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    # Only the head's MLP may move: every mask stays as it was, so a box gives the same Dice.
    assert all(k.startswith("mask_decoder.iou_prediction_head.") for k in changed), changed
    box_after = validation_dice(
        loaded.sam, fetal_heads["val"], loaded.config, embeddings=fetal_heads["val_embeddings"]
    )
    assert box_after == box_before
    assert report.click_dice >= report.click_dice_before
    assert report.click_dice <= report.click_dice_oracle + 1e-6
    assert (report.best_epoch >= 0) == bool(changed)  # kept only when it ranked better
    assert not any(
        p.requires_grad for p in loaded.sam.mask_decoder.iou_prediction_head.parameters()
    )


def test_click_validation_scores_the_refined_answer_a_user_gets(fetal_heads: dict) -> None:
    """validation_dice's one click is the product's: SAM's best, answered again with its own box."""
    import numpy as np

    from minisam.prompts import REFINE_BOX_MARGIN, Prompt, box_from_mask, dominant_region
    from minisam.training.mask_loss import decode

    loaded = load_model(SMALL_MODEL)
    val, embeddings = fetal_heads["val"], fetal_heads["val_embeddings"]
    size = loaded.config.image_size
    by_hand = {"raw": [], "refine": []}
    with torch.inference_mode():
        for features, truth in zip(embeddings, val.masks, strict=True):
            point = interior_point(truth.numpy())
            click = Prompt(points=point[None], labels=np.ones(1, dtype=np.int64))
            logits, iou, _ = decode(loaded.sam, features, click, True, size)
            best = (logits[int(iou.argmax())] > 0).numpy()
            box = box_from_mask(dominant_region(best), margin=REFINE_BOX_MARGIN)
            boxed = Prompt(points=click.points, labels=click.labels, box=box)
            refined = (decode(loaded.sam, features, boxed, False, size)[0][0] > 0).numpy()
            for mode, mask in (("raw", best), ("refine", refined if refined.any() else best)):
                by_hand[mode].append(dice(mask, truth.numpy()))
    for mode in ("raw", "refine"):
        measured = validation_dice(
            loaded.sam, val, loaded.config, prompt="click", embeddings=embeddings, lone_click=mode
        )
        assert measured == pytest.approx(np.mean(by_hand[mode]), abs=1e-6), mode
    assert by_hand["raw"] != by_hand["refine"]  # the second pass changed some mask
    default = validation_dice(loaded.sam, val, loaded.config, prompt="click", embeddings=embeddings)
    assert default == pytest.approx(np.mean(by_hand["refine"]), abs=1e-6)
    with pytest.raises(PromptError, match="lone_click 'box'"):
        validation_dice(loaded.sam, val, loaded.config, prompt="click", lone_click="box")


def test_stored_embeddings_survive_a_decoder_change(fetal_heads: dict) -> None:
    store: EmbeddingStore = fetal_heads["store"]
    model = load_model(SMALL_MODEL)
    with torch.no_grad():
        for param in model.sam.mask_decoder.parameters():
            param.add_(0.1)
    again = EmbeddingStore(model, store.folder)
    cached = again(fetal_heads["val"].images[:2])
    assert again.computed == 0
    torch.testing.assert_close(cached, fetal_heads["val_embeddings"][:2])


def test_a_decoder_only_adapter_leaves_the_encoder_out() -> None:
    spec = AdapterSpec(target_modules=(), include_decoder=True)
    sam = load_model(SMALL_MODEL).sam
    names = target_module_names(sam, spec)
    assert names and all(n.startswith("mask_decoder.transformer.") for n in names)
    model = attach_adapter(sam, spec, "prompts")
    assert not any("lora" in k for k in model.base_model.model.image_encoder.state_dict())


def test_box_anchor_keeps_box_masks_near_the_starting_models(fetal_heads: dict) -> None:
    """Steps of the prompted loss on boxes with a wrong target (the mask shifted): without the anchor
    the box masks follow it, with it they stay near the starting model's."""
    from minisam.metrics import dice
    from minisam.prompts import Prompt, mask_bounding_box
    from minisam.training.mask_loss import PromptedMaskLoss, decode
    from minisam.training.prompt_tuning import _frozen_prompt_path

    features = fetal_heads["train_embeddings"][:5]
    truths = fetal_heads["train"].masks[:5]
    prompts = [Prompt.create(box=mask_bounding_box(t.numpy())) for t in truths]
    wrong = torch.roll(truths, shifts=40, dims=2)

    def box_masks(sam) -> list:
        with torch.no_grad():
            return [
                (decode(sam, f, p, False, size)[0][0] > 0).numpy()
                for f, p in zip(features, prompts, strict=True)
            ]

    moved = {}
    for weight in (0.0, 4.0):
        loaded = load_model(SMALL_MODEL)
        size = loaded.config.image_size
        start = box_masks(loaded.sam)
        anchor = _frozen_prompt_path(loaded.sam)
        loss = PromptedMaskLoss(
            loaded.sam, loaded.config, precomputed=True, anchor=anchor, anchor_weight=weight
        )
        params = [p for n, p in loaded.sam.named_parameters() if n.startswith("mask_decoder.")]
        optimizer = torch.optim.Adam(params, lr=1e-3)
        for _ in range(15):
            optimizer.zero_grad()
            loss(features, wrong, prompts).backward()
            optimizer.step()
        after = box_masks(loaded.sam)
        moved[weight] = sum(1 - dice(a, b) for a, b in zip(start, after, strict=True)) / 5
    assert moved[0.0] > 0.1 and moved[4.0] < moved[0.0] / 2, moved
