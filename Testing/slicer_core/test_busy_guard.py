"""One MiniSAM action at a time: a click that arrives while the GUI processes events inside another action
(package installation, model loading, the slice encoder, propagation) is refused, never run inside it."""

from __future__ import annotations

import itertools
import threading

import pytest
from MiniSAMSegmentLib.busy import BusyError, BusyGuard, run_in_background
from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic
from slicer_cases import LIVER_BOX, LIVER_SLICE

I0, J0, I1, J1 = LIVER_BOX
BOX = [(I0, J0, LIVER_SLICE), (I1, J1, LIVER_SLICE)]


def test_the_guard_refuses_a_second_action_with_one_clear_line() -> None:
    times = itertools.chain([10.0, 13.4], itertools.repeat(20.0))
    guard = BusyGuard(clock=lambda: next(times))
    with guard("loading model default"):
        assert guard.task == "loading model default"
        with pytest.raises(BusyError) as refused:
            with guard("segmenting a slice"):
                pytest.fail("a second action ran inside the first")
    assert str(refused.value) == (
        "MiniSAM is busy loading model default (for 3 s): wait until it has finished, then try again"
    )
    assert guard.task is None
    with pytest.raises(RuntimeError), guard("failing"):
        raise RuntimeError("boom")
    with guard("after a failure"):  # an action that failed leaves the guard free
        assert guard.task == "after a failure"


def test_work_runs_on_a_worker_while_the_caller_pumps() -> None:
    pumped, threads = threading.Event(), []

    def work() -> str:
        threads.append(threading.current_thread())
        assert pumped.wait(10), "the calling thread never pumped while the work ran"
        return "loaded"

    assert run_in_background(work, pumped.set, interval=0.01) == "loaded"
    assert threads[0] is not threading.main_thread()

    def failing() -> None:
        raise ValueError("corrupt checkpoint")

    with pytest.raises(ValueError, match="corrupt checkpoint"):  # raised in the caller, as is
        run_in_background(failing, lambda: None, interval=0.01)
    assert run_in_background(lambda: threading.current_thread(), None) is threading.main_thread()


def test_a_click_while_the_model_loads_is_refused(context, ct_volume, segment_logic) -> None:
    release, load_threads, refusals = threading.Event(), [], []

    def slow_loader(spec: str):
        load_threads.append(threading.current_thread())
        assert release.wait(30)
        return segment_logic.model  # the embedded default, loaded once for the session

    logic = MiniSAMSegmentLogic("default", device="cpu", loader=slow_loader)
    segmentation = context.new_segmentation(ct_volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")

    def pump() -> None:  # what processing Qt events does when the user clicks meanwhile
        if release.is_set():
            return
        for action in (
            lambda: logic.prompt_slice(ct_volume, "axial", box_ijk=BOX),
            lambda: logic.prompt_slice(
                ct_volume, "axial", box_ijk=BOX, segmentation_node=segmentation,
                segment_id=segment_id,
            ),
            logic.clear_prompts,
            logic.load,
        ):  # fmt: skip
            with pytest.raises(BusyError) as refused:
                action()
            refusals.append(str(refused.value))
        release.set()

    assert logic.load(pump) is segment_logic.model
    assert load_threads[0] is not threading.main_thread()  # loaded off the calling thread
    assert len(refusals) == 4
    assert all(r.startswith("MiniSAM is busy loading model default (for ") for r in refusals)
    assert not logic.book.pages  # the refused click left no prompt behind
    edit = logic.prompt_slice(ct_volume, "axial", box_ijk=BOX)  # free again once loaded
    assert edit.index == LIVER_SLICE and edit.mask.any()


def test_a_click_during_propagation_is_refused_and_the_slice_encoder_can_run_off_thread(
    context, ct_volume, segment_logic, monkeypatch
) -> None:
    segmentation = context.new_segmentation(ct_volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    segment_logic.release_data()
    engine = segment_logic.engine
    embed, encoder_threads = engine.embed, []

    def recording_embed(image):
        encoder_threads.append(threading.current_thread())
        return embed(image)

    monkeypatch.setattr(engine, "embed", recording_embed)
    edit = segment_logic.prompt_slice(
        ct_volume, "axial", box_ijk=BOX, segmentation_node=segmentation, segment_id=segment_id,
        pump=lambda: None,
    )  # fmt: skip
    # the background worker embedded the slice (and then its neighbours) while this thread pumped
    assert encoder_threads and threading.main_thread() not in encoder_threads
    axis, prompts = segment_logic.remembered_prompts(ct_volume, segmentation, segment_id)
    before = {i: repr(p) for i, p in prompts.items()}

    refusals = []

    def progress(done: int, total: int) -> bool:  # the effect processes Qt events here
        try:
            segment_logic.prompt_slice(
                ct_volume, "axial", positive_ijk=[((I0 + I1) / 2, (J0 + J1) / 2, LIVER_SLICE)],
                segmentation_node=segmentation, segment_id=segment_id,
            )  # fmt: skip
        except BusyError as exc:
            refusals.append(str(exc))
        return True

    result = segment_logic.propagate(ct_volume, axis, prompts, progress=progress)
    assert len(result.slices) > 1 and refusals  # propagation went on; every click was refused
    assert all(r.startswith("MiniSAM is busy propagating") for r in refusals)
    after = segment_logic.remembered_prompts(ct_volume, segmentation, segment_id)[1]
    assert {i: repr(p) for i, p in after.items()} == before  # no refused click was remembered
    assert edit.index == LIVER_SLICE
    segment_logic.release_data()
    segment_logic.background = False  # without the background worker: a pump moves the encoder off
    try:
        encoder_threads.clear()
        segment_logic.prompt_slice(ct_volume, "axial", box_ijk=BOX, pump=lambda: None)
        assert len(encoder_threads) == 1 and encoder_threads[0] is not threading.main_thread()
        segment_logic.cache.clear()
        encoder_threads.clear()
        segment_logic.prompt_slice(ct_volume, "axial", box_ijk=BOX)  # no pump: in this thread
        assert encoder_threads == [threading.main_thread()]
    finally:
        segment_logic.background = True
        segment_logic.release_data()
