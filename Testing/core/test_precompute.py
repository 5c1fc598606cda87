"""Background precompute (minisam.precompute) through VolumeSession: neighbours embedded ahead, bounded,
cancellable, one computation per slice, worker errors kept for the next request. Encoder calls are counted
and the worker is awaited on events and futures, never timed."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import SMALL_MODEL

from minisam.embedding_cache import EmbeddingCache
from minisam.engine import SamEngine
from minisam.model_config import build_sam, preset
from minisam.prompts import Prompt
from minisam.volume_session import VolumeSession

WAIT = 120  # seconds: only a hung worker ever waits this long (a failure guard, not a timing)
SLICES = 9


class CountingEncoder:
    """Wraps ``engine.embed``: records which slice each encoder call was for (slice i is filled with
    i * 20) and lets a test hold the call for a slice until it releases it, or make one fail."""

    def __init__(self, engine: SamEngine) -> None:
        self.embed = engine.embed
        self.calls: list[int] = []
        self.entered: dict[int, threading.Event] = {}  # slice -> set once its call has started
        self.release: dict[int, threading.Event] = {}  # slice -> its held call goes on when set
        self.fail: dict[int, Exception] = {}  # slice -> raised once
        engine.embed = self

    def hold(self, index: int) -> None:
        self.entered[index], self.release[index] = threading.Event(), threading.Event()

    def __call__(self, rgb: np.ndarray):
        index = int(round(float(rgb[0, 0, 0]) / 20))
        self.calls.append(index)
        if index in self.release:
            self.entered[index].set()
            assert self.release[index].wait(WAIT), "the test never released the encoder"
        if index in self.fail:
            raise self.fail.pop(index)
        return self.embed(rgb)


@pytest.fixture()
def engine() -> SamEngine:
    torch.manual_seed(0)
    config = preset("tiny")
    return SamEngine(build_sam(config), config)


@pytest.fixture()
def volume() -> np.ndarray:
    """(9, 40, 48): slice i is i * 20 (its encoder call names it) with a bright square in it."""
    array = np.repeat(np.arange(SLICES, dtype=np.float32)[:, None, None] * 20, 40, 1)
    array = np.repeat(array, 48, 2)
    array[:, 10:30, 12:36] += 50
    return array


def _session(engine, volume, **options) -> VolumeSession:
    return VolumeSession(engine, volume, key="v", background=True, **options)


def _held_at_slice_4(engine, volume) -> tuple[CountingEncoder, VolumeSession]:
    """A background session focused on slice 4 whose worker is held inside the encoder call for it."""
    encoder = CountingEncoder(engine)
    encoder.hold(4)
    session = _session(engine, volume)
    session.focus(0, 4)
    assert encoder.entered[4].wait(WAIT)
    return encoder, session


BOX = Prompt(box=np.array([12, 10, 36, 30], dtype=float))


def test_a_click_next_to_the_focus_slice_costs_a_decoder_pass_only(engine, volume) -> None:
    encoder = CountingEncoder(engine)
    session = _session(engine, volume, neighbours=2)
    session.focus(0, 4)  # the user looks at slice 4
    assert session.precompute.wait_idle(WAIT)
    assert encoder.calls == [4, 5, 3, 6, 2]  # the focus slice first, then nearest first
    for index in (3, 4, 5):  # clicks on k-1, k, k+1: no new encoder call
        prediction = session.predict(0, index, BOX)
        assert prediction.mask.shape == (40, 48)
    assert encoder.calls == [4, 5, 3, 6, 2]
    assert session.cache.hits == 3 and session.cache.misses == 0
    session.close()


def test_the_embeddings_are_those_of_a_session_without_background(engine, volume) -> None:
    background, plain = _session(engine, volume), VolumeSession(engine, volume, key="p")
    background.focus(0, 6)
    assert background.precompute.wait_idle(WAIT)
    for index in (5, 6, 7):
        torch.testing.assert_close(
            background.embedding(0, index).features, plain.embedding(0, index).features
        )
    background.close()


def test_the_cache_budget_holds_and_the_focus_slice_is_never_evicted(engine, volume) -> None:
    one = engine.embed(np.zeros((40, 48, 3), np.float32)).nbytes
    encoder = CountingEncoder(engine)
    cache = EmbeddingCache(max_bytes=2 * one)
    session = VolumeSession(engine, volume, cache=cache, key="v", background=True, neighbours=3)
    session.focus(0, 4)  # the size of an embedding is not known yet: 7 planned, 2 fit
    assert session.precompute.wait_idle(WAIT)
    assert cache.nbytes <= cache.max_bytes and len(cache) == 2
    assert ("v", 0, 4) in cache  # pinned: the neighbours computed after it did not push it out
    calls = len(encoder.calls)
    session.focus(0, 1)  # now known: the plan is cut to what fits (the focus and one neighbour)
    assert session.precompute.wait_idle(WAIT)
    assert len(encoder.calls) - calls <= 2
    assert cache.nbytes <= cache.max_bytes and ("v", 0, 1) in cache
    session.close()
    assert session.precompute.queued == ()


def test_close_stops_the_worker_and_discards_the_embedding_in_flight(engine, volume) -> None:
    encoder, session = _held_at_slice_4(engine, volume)
    assert session.precompute.queued == (("v", 0, 5), ("v", 0, 3), ("v", 0, 6), ("v", 0, 2))
    session.close()  # the volume changed: never blocks, even with a call in flight
    assert session.precompute.queued == ()
    encoder.release[4].set()
    session.precompute.close(wait=True)  # returns once the worker thread has ended
    assert encoder.calls == [4]  # nothing after the call that was running
    assert len(session.cache) == 0  # and its result was dropped
    assert session.embedding(0, 5).features.shape[0] == 1  # a closed session computes in place


def test_cancel_drops_the_queue_and_keeps_the_embedding_in_flight(engine, volume) -> None:
    encoder, session = _held_at_slice_4(engine, volume)
    session.precompute.cancel()
    encoder.release[4].set()
    assert session.precompute.wait_idle(WAIT)
    assert encoder.calls == [4] and ("v", 0, 4) in session.cache
    session.close()


def test_a_click_waits_for_the_slice_being_embedded_instead_of_embedding_it_again(
    engine, volume
) -> None:
    encoder, session = _held_at_slice_4(engine, volume)
    with ThreadPoolExecutor(3) as clicks:  # three clicks on slice 4 while the worker embeds it
        futures = [clicks.submit(session.predict, 0, 4, BOX) for _ in range(3)]
        encoder.release[4].set()
        masks = [future.result(WAIT).mask for future in futures]
    assert encoder.calls.count(4) == 1
    assert all(np.array_equal(masks[0], mask) for mask in masks)
    session.close()


def test_a_click_on_a_slice_not_queued_goes_first(engine, volume) -> None:
    encoder, session = _held_at_slice_4(engine, volume)
    with ThreadPoolExecutor(1) as clicks:
        click = clicks.submit(session.embedding, 0, 8)  # not among 4's neighbours
        encoder.release[4].set()
        click.result(WAIT)
    assert encoder.calls[:2] == [4, 8]  # after the call in flight, before the neighbours
    assert session.precompute.wait_idle(WAIT)
    assert sorted(encoder.calls) == [2, 3, 4, 5, 6, 8]  # each once
    session.close()


def test_a_failure_in_the_worker_surfaces_on_the_next_request_for_that_slice(
    engine, volume
) -> None:
    encoder = CountingEncoder(engine)
    encoder.fail[5] = RuntimeError("encoder out of memory")
    session = _session(engine, volume)
    session.focus(0, 4)
    assert session.precompute.wait_idle(WAIT)
    session.predict(0, 4, BOX)  # other slices are fine
    session.focus(0, 4)  # planning again does not retry it behind the user's back
    assert session.precompute.wait_idle(WAIT) and encoder.calls.count(5) == 1
    with pytest.raises(RuntimeError, match="encoder out of memory"):
        session.predict(0, 5, BOX)
    assert session.predict(0, 5, BOX).mask.shape == (40, 48)  # the next request computes again
    assert encoder.calls.count(5) == 2
    session.close()


def test_a_waiting_click_pumps_and_a_closed_queue_cancels_it(engine, volume) -> None:
    encoder, session = _held_at_slice_4(engine, volume)
    pumped = threading.Event()

    def pump() -> None:  # what the GUI thread does while the worker embeds: here, let it finish
        pumped.set()
        encoder.release[4].set()

    session.embedding(0, 4, pump=pump)
    assert pumped.is_set() and encoder.calls.count(4) == 1
    assert session.precompute.wait_idle(WAIT)
    encoder.hold(1)
    session.focus(0, 1)
    assert encoder.entered[1].wait(WAIT)

    def close() -> None:  # the volume goes away while a click waits behind the call for slice 1
        session.close()
        encoder.release[1].set()

    with pytest.raises(CancelledError):
        session.embedding(0, 7, pump=close)
    assert 7 not in encoder.calls


def test_propagation_embeds_ahead_once_per_slice_with_the_same_masks(shared_data: Path) -> None:
    from minisam.imageio import read_image
    from minisam.intensity import normalize_intensity
    from minisam.model_loader import load_model
    from minisam.propagation import PropagationSettings

    loaded = load_model(SMALL_MODEL)
    engine = SamEngine(loaded.sam, loaded.config)
    volume = normalize_intensity(
        read_image(shared_data / "totalsegmentator_example/example_ct_sm.nii.gz").array, "ct"
    )
    prompts = {24: Prompt(box=np.array([44, 27, 104, 81], dtype=float))}  # the liver
    settings = PropagationSettings(max_slices=6)
    plain = VolumeSession(engine, volume, key="plain").segment(0, prompts, True, settings)
    calls: list[int] = []
    embed = engine.embed

    def counting(rgb):
        calls.append(1)
        return embed(rgb)

    engine.embed = counting
    session = VolumeSession(engine, volume, key="ahead", background=True, ahead=3)
    result = session.segment(0, prompts, True, settings)
    assert session.precompute.wait_idle(WAIT)
    assert sorted(result.slices) == sorted(plain.slices) and len(result.slices) > 3
    for index, item in plain.slices.items():
        assert np.array_equal(result.slices[index].mask, item.mask)
    # each slice once (a second call for a key would not grow the cache), and beyond where each
    # direction stopped at most the slice it stopped at and the ones queued ahead of it
    assert len(session.cache) == len(calls) <= len(result.slices) + 2 * (1 + session.ahead)
    session.close()
