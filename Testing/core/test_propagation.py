"""Propagation through a real volume with a tiny SAM fitted in the test on that volume's annotated slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from minisam.embedding_cache import EmbeddingCache
from minisam.engine import SamEngine
from minisam.imageio import read_image
from minisam.intensity import normalize_intensity
from minisam.metrics import dice
from minisam.model_config import build_sam, preset
from minisam.prompts import Prompt, mask_bounding_box
from minisam.propagation import PropagationSettings
from minisam.training.base_trainer import TrainSettings, train_base
from minisam.training.model_inputs import to_model_inputs
from minisam.training.slice_samples import samples_from_volume
from minisam.volume_session import VolumeSession

BRATS = "brats2021_samplecase_sammed3d"
FLAIR = "BraTS2021_01646_flair.nii.gz"
EDEMA = "BraTS2021_01646_label_edema.nii.gz"


@pytest.fixture(scope="module")
def fitted(
    shared_data: Path, tmp_path_factory
) -> tuple[SamEngine, np.ndarray, np.ndarray, EmbeddingCache]:
    """A tiny SAM fitted to box→edema on this FLAIR volume, the normalised volume, its edema labels and an
    embedding cache the tests share (so each slice is encoded once per module)."""
    folder = shared_data / BRATS
    config = preset("tiny")
    samples = samples_from_volume(folder / FLAIR, folder / EDEMA, "brats", "mr", min_area=10)
    inputs = to_model_inputs(samples, config)
    torch.manual_seed(0)
    sam = build_sam(config)
    out = tmp_path_factory.mktemp("fit") / "tiny.safetensors"
    report = train_base(
        sam,
        config,
        inputs,
        inputs,
        out,
        # Fitted to this one volume (the tests are about propagation, not generalisation): no
        # geometric augmentation or corrective clicks, which slow a 20-epoch fit of a tiny model.
        TrainSettings(
            epochs=20,
            batch_size=8,
            learning_rate=2e-3,
            box_probability=1.0,
            geometric_augmentation=0.0,
            correction_clicks=0,
        ),
    )
    assert report.best_val_dice > 0.6, report.history[-1]
    image = read_image(folder / FLAIR)
    labels = read_image(folder / EDEMA).array > 0
    return SamEngine(sam, config), normalize_intensity(image.array, "mr"), labels, EmbeddingCache()


def test_propagation_follows_the_lesion_and_stops_where_it_ends(fitted) -> None:
    engine, volume, truth, cache = fitted
    session = VolumeSession(engine, volume, cache=cache, key="brats")
    seed = 62
    prompt = Prompt(box=mask_bounding_box(truth[seed]))
    result = session.segment(
        0,
        {seed: prompt},
        propagate=True,
        settings=PropagationSettings(min_score=0.0, min_area_px=5),
    )
    filled = sorted(result.slices)
    # Contiguous run around the seed covering a good part of the lesion (slices 39..85).
    assert filled == list(range(filled[0], filled[-1] + 1))
    assert filled[0] <= seed - 10 and filled[-1] >= seed + 10
    # It stopped because the mask vanished, not by running off the volume (0..103).
    assert filled[0] > 25 and filled[-1] < 95, filled
    assert all("vanished" in reason or "grew" in reason for reason in result.stop_reasons), (
        result.stop_reasons
    )
    assert dice(result.labels, truth) > 0.5


def test_score_threshold_stops_propagation_earlier(fitted) -> None:
    engine, volume, truth, cache = fitted
    session = VolumeSession(engine, volume, cache=cache, key="brats")
    prompt = Prompt(box=mask_bounding_box(truth[62]))
    loose = session.segment(
        0, {62: prompt}, propagate=True, settings=PropagationSettings(min_score=0.0)
    )
    misses = cache.misses
    strict = session.segment(
        0, {62: prompt}, propagate=True, settings=PropagationSettings(min_score=0.99)
    )
    assert set(strict.slices) < set(loose.slices)
    assert any("score" in reason for reason in strict.stop_reasons)
    # Every slice the strict run visited was encoded by the loose run: no embedding computed again.
    assert cache.misses == misses


def test_two_prompted_slices_meet_without_overlap_fighting(fitted) -> None:
    engine, volume, truth, cache = fitted
    session = VolumeSession(engine, volume, cache=cache, key="brats")
    prompts = {i: Prompt(box=mask_bounding_box(truth[i])) for i in (50, 70)}
    result = session.segment(
        0, prompts, propagate=True, settings=PropagationSettings(min_score=0.0)
    )
    assert {50, 70} <= set(result.slices)
    assert all(result.slices[i].prompted for i in (50, 70))
    assert any("reached prompted slice" in reason for reason in result.stop_reasons)


def test_max_slices_and_cancel(fitted) -> None:
    engine, volume, truth, cache = fitted
    session = VolumeSession(engine, volume, cache=cache, key="brats")
    prompt = Prompt(box=mask_bounding_box(truth[62]))
    capped = session.segment(
        0, {62: prompt}, propagate=True, settings=PropagationSettings(min_score=0.0, max_slices=3)
    )
    assert sorted(capped.slices) == list(range(59, 66))
    calls = []
    cancelled = session.segment(
        0,
        {62: prompt},
        propagate=True,
        settings=PropagationSettings(min_score=0.0),
        progress=lambda done, total: calls.append(done) or len(calls) < 2,
    )
    assert cancelled.cancelled and len(cancelled.slices) == 3
