"""The single-slice engine and the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minisam.embedding_cache import EmbeddingCache
from minisam.engine import SamEngine
from minisam.errors import PromptError
from minisam.model_config import build_sam, preset
from minisam.prompts import REFINE_BOX_MARGIN, Prompt, box_from_mask, dominant_region
from minisam.volume_session import VolumeSession


@pytest.fixture()
def engine() -> SamEngine:
    torch.manual_seed(0)
    config = preset("tiny")
    return SamEngine(build_sam(config), config)


def test_masks_have_the_slice_size_and_scores_are_sorted(engine: SamEngine) -> None:
    rgb = np.random.default_rng(0).uniform(0, 255, (70, 90, 3)).astype(np.float32)
    embedding = engine.embed(rgb)
    single = engine.predict(embedding, Prompt.create(box=[10, 10, 40, 50]))
    assert single.masks.shape == (1, 70, 90) and single.masks.dtype == bool
    multi = engine.predict(
        embedding, Prompt.create(positive=[[20, 30]], negative=[[80, 60]]), multimask=True
    )
    assert multi.masks.shape == (3, 70, 90)
    assert np.all(np.diff(multi.scores) <= 0)
    assert multi.low_res_logits.shape == (3, 64, 64)  # 4x the 16x16 embedding grid
    again = engine.predict(embedding, Prompt.create(box=[10, 10, 40, 50]))
    np.testing.assert_array_equal(single.masks, again.masks)


def test_cache_is_lru_under_a_byte_budget(engine: SamEngine) -> None:
    embedding = engine.embed(np.zeros((32, 32, 3), np.float32))
    cache = EmbeddingCache(max_bytes=3 * embedding.nbytes)
    for key in "abc":
        cache.put(key, embedding)
    assert cache.get("a") is embedding  # "a" becomes most recent
    cache.put("d", embedding)
    assert "b" not in cache and {"a", "c", "d"} == {k for k in "abcd" if k in cache}
    assert cache.nbytes == 3 * embedding.nbytes
    assert cache.hits == 1


def test_session_caches_per_axis_and_slice(engine: SamEngine) -> None:
    volume = np.random.default_rng(1).uniform(0, 255, (6, 20, 30)).astype(np.float32)
    session = VolumeSession(engine, volume)
    prompt = Prompt.create(box=[2, 2, 10, 10])
    session.predict(0, 3, prompt)
    session.predict(0, 3, Prompt.create(positive=[[5, 5]]))
    assert session.cache.misses == 1 and session.cache.hits == 1
    result = session.predict(1, 4, Prompt.create(box=[2, 1, 10, 4]))
    assert result.masks.shape[1:] == (6, 30)  # coronal slice of a (Z, Y, X) array is (Z, X)
    assert session.cache.misses == 2


def test_a_lone_click_gets_three_candidates_unless_told_otherwise(engine: SamEngine) -> None:
    rng = np.random.default_rng(0)
    embedding = engine.embed(rng.integers(0, 255, (60, 80, 3)).astype(np.float32))
    click = Prompt(points=np.array([[30.0, 20.0]]), labels=np.array([1]))
    two = Prompt(points=np.array([[30.0, 20.0], [50.0, 40.0]]), labels=np.array([1, 0]))
    box = Prompt(box=np.array([10.0, 10.0, 50.0, 40.0]))
    assert click.is_ambiguous and not two.is_ambiguous and not box.is_ambiguous
    assert len(engine.predict(embedding, click, multimask=True).masks) == 3
    assert len(engine.predict(embedding, click).masks) in (3, 4)  # 4: refined, then SAM's three
    assert len(engine.predict(embedding, click, multimask=False).masks) == 1
    assert len(engine.predict(embedding, two).masks) == 1
    assert len(engine.predict(embedding, box).masks) == 1
    assert len(engine.predict(embedding, box, multimask=True).masks) == 3
    with_previous = click.with_point(np.array([40.0, 30.0]), 1, mask_logits=np.zeros((1, 16, 16)))
    assert not with_previous.is_ambiguous


def test_the_best_mask_alone_is_upsampled_alone_and_equals_sams_postprocess(
    engine: SamEngine,
) -> None:
    engine.lone_click = "raw"  # SAM's candidates as they are (the refinement is tested below)
    rgb = np.random.default_rng(1).uniform(0, 255, (70, 90, 3)).astype(np.float32)
    embedding = engine.embed(rgb)
    prompt = Prompt.create(positive=[[20, 30]])
    upsampled = []
    original = engine.logits_to_masks

    def counting(transform, logits):
        upsampled.append(len(logits))
        return original(transform, logits)

    engine.logits_to_masks = counting
    prediction = engine.predict(embedding, prompt)
    best = prediction.mask
    assert upsampled == [1]  # a click's result needs one mask at the slice's size, not three
    candidates = prediction.masks
    assert upsampled == [1, 3] and candidates.shape == (3, 70, 90)
    np.testing.assert_array_equal(best, candidates[0])
    # the reference: SAM's postprocess of all three logits at once, thresholded
    logits = torch.from_numpy(prediction.low_res_logits)[None]
    transform = embedding.transform
    reference = engine.sam.postprocess_masks(logits, transform.input_size, transform.original_size)
    np.testing.assert_array_equal(candidates, (reference[0] > engine.sam.mask_threshold).numpy())


def test_a_lone_click_is_answered_again_with_the_box_of_its_best_candidate(
    engine: SamEngine,
) -> None:
    rgb = np.random.default_rng(2).uniform(0, 255, (70, 90, 3)).astype(np.float32)
    embedding = engine.embed(rgb)
    click = Prompt.create(positive=[[40, 30]])
    engine.lone_click = "raw"
    raw = engine.predict(embedding, click)
    box = box_from_mask(dominant_region(raw.mask), margin=REFINE_BOX_MARGIN)
    assert box is not None
    boxed = engine.predict(embedding, Prompt(points=click.points, labels=click.labels, box=box))
    assert boxed.mask.any() and not np.array_equal(boxed.mask, raw.mask)
    engine.lone_click = "refine"
    refined = engine.predict(embedding, click)
    np.testing.assert_array_equal(refined.mask, boxed.mask)
    # the refined mask comes first; SAM's three follow, its unrefined best first ("next candidate")
    assert refined.masks.shape == (4, 70, 90)
    np.testing.assert_array_equal(refined.masks[0], boxed.mask)
    np.testing.assert_array_equal(refined.masks[1:], raw.masks)
    np.testing.assert_allclose(refined.scores, [boxed.score, *raw.scores])
    np.testing.assert_array_equal(refined.low_res_logits[0], boxed.low_res_logits[0])
    np.testing.assert_array_equal(refined.low_res_logits[1:], raw.low_res_logits)
    # only a lone click left to the engine is refined: asked-for candidates are SAM's own
    asked = engine.predict(embedding, click, multimask=True)
    np.testing.assert_array_equal(asked.masks, raw.masks)
    with pytest.raises(PromptError, match="lone_click 'box': expected refine or raw"):
        SamEngine(engine.sam, engine.config, lone_click="box")
