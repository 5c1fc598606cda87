"""The effect's background embedding through the logic (slicer-core): the slice a view shows and its
neighbours are embedded ahead, so a click there runs the decoder only; the encoder runtime is a logic
setting (the effect's "Runtime" parameter) and a batch_segment.py option. Encoder calls are counted and
the worker awaited on its idle event, never timed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import slicer
from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic, volume_arrays
from model_files import SMALL_MODEL
from slicer_cases import CT, LIVER_BOX, LIVER_SLICE

from minisam.errors import ModelError, PromptError
from minisam.metrics import dice

WAIT = 300  # seconds: only a hung worker waits this long (a failure guard, not a timing)
I0, J0, I1, J1 = LIVER_BOX


@pytest.fixture()
def logic(segment_logic):
    """A logic with the session's small model (loaded once), released after the test."""
    made = MiniSAMSegmentLogic(SMALL_MODEL, device="cpu", loader=lambda spec: segment_logic.model)
    yield made
    made.release()


def _axial_view(context, volume, k: int):
    """A slice node showing axial slice ``k`` of ``volume`` (as a slice view's node does)."""
    node = context.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    node.SetOrientationToAxial()
    _jump(node, volume, k)
    return node


def _jump(node, volume, k: int) -> None:
    ras = volume_arrays(volume).ijk_to_ras @ [(I0 + I1) / 2, (J0 + J1) / 2, k, 1]
    node.JumpSlice(*ras[:3])


def _count_encoder_calls(logic, monkeypatch) -> list[int]:
    calls, embed = [], logic.engine.embed

    def counting(rgb):
        calls.append(1)
        return embed(rgb)

    monkeypatch.setattr(logic.engine, "embed", counting)
    return calls


def _box(k: int) -> list[tuple[float, float, int]]:
    return [(I0, J0, k), (I1, J1, k)]


def test_a_shown_slice_and_its_neighbours_are_embedded_ahead_of_the_click(
    context, ct_volume, logic, monkeypatch
) -> None:
    view = _axial_view(context, ct_volume, LIVER_SLICE)
    assert logic.focus_view(ct_volume, view) is None  # the model is not ready: nothing loads
    assert logic.held_volume_ids() == []
    logic.load()
    calls = _count_encoder_calls(logic, monkeypatch)
    assert logic.focus_view(ct_volume, view) == (0, LIVER_SLICE)
    session = logic.session(ct_volume)
    assert session.precompute.wait_idle(WAIT)
    assert len(calls) == 5  # the slice and two neighbours on each side
    for k in (LIVER_SLICE - 1, LIVER_SLICE, LIVER_SLICE + 1):  # the user clicks on k-1, k, k+1
        edit = logic.prompt_slice(ct_volume, "axial", box_ijk=_box(k), pump=lambda: None)
        assert edit.index == k and edit.mask.any()
    assert session.precompute.wait_idle(WAIT)
    assert len(calls) == 5 + 2  # the clicks cost no encoder call; k+-2's outer neighbours came next
    _jump(view, ct_volume, 5)  # scrolled away
    assert logic.focus_view(ct_volume, view) == (0, 5)
    assert session.precompute.wait_idle(WAIT) and len(calls) == 12
    assert (session.key, 0, 5) in logic.cache


def test_the_gui_thread_lends_the_worker_time_until_it_is_idle(
    context, ct_volume, logic, monkeypatch
) -> None:
    logic.load()
    embed, entered, release = logic.engine.embed, threading.Event(), threading.Event()

    def held(rgb):  # the worker's first encoder call waits for the test
        entered.set()
        assert release.wait(WAIT)
        return embed(rgb)

    monkeypatch.setattr(logic.engine, "embed", held)
    assert logic.wait_for_background(0)  # nothing queued
    logic.focus_view(ct_volume, _axial_view(context, ct_volume, LIVER_SLICE))
    assert entered.wait(WAIT)
    assert not logic.wait_for_background(0)  # the effect's timer keeps ticking
    release.set()
    assert logic.wait_for_background(WAIT)  # all five embedded: the timer stops
    assert len(logic.cache) == 5


def test_nothing_is_queued_while_busy_or_for_a_slice_off_the_volume(
    context, ct_volume, logic, monkeypatch
) -> None:
    logic.load()
    calls = _count_encoder_calls(logic, monkeypatch)
    view = _axial_view(context, ct_volume, LIVER_SLICE)
    with logic.guard("propagating"):  # a slice view scrolled while an action processes events
        assert logic.focus_view(ct_volume, view) is None
    view.JumpSlice(0, 0, 10_000)  # far above the volume
    assert logic.focus_view(ct_volume, view) is None
    view.SetOrientationToSagittal()
    view.SetSliceToRASByNTP(1, 1, 0, 0, 0, 1, 0, 0, 0, 0)  # oblique (45 degrees): no voxel axis
    assert logic.focus_view(ct_volume, view) is None
    assert logic.focus_view(None, view) is None
    session = logic.session(ct_volume)
    assert session.precompute.wait_idle(WAIT) and calls == []


def test_a_voxel_change_stops_the_old_sessions_worker(context, ct_volume, logic) -> None:
    logic.load()
    view = _axial_view(context, ct_volume, LIVER_SLICE)
    logic.focus_view(ct_volume, view)
    before = logic.session(ct_volume)
    slicer.util.arrayFromVolume(ct_volume)[LIVER_SLICE] += 1
    slicer.util.arrayFromVolumeModified(ct_volume)
    assert logic.focus_view(ct_volume, view) == (0, LIVER_SLICE)  # the old session is closed here
    old = [key for key in logic.cache.keys() if key[0] == before.key]
    after = logic.session(ct_volume)
    assert after is not before and before.precompute.closed and not after.precompute.closed
    assert before.precompute.queued == ()
    assert after.precompute.wait_idle(WAIT)
    before.precompute.close(wait=True)  # its worker has ended ...
    assert [key for key in logic.cache.keys() if key[0] == before.key] == old  # ... adding nothing


def test_the_encoder_runtime_is_a_logic_setting(ct_volume, logic, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MINISAM_CACHE", str(tmp_path))  # the export goes here, not into the user's
    logic.runtime = "torch"
    reference = logic.prompt_slice(ct_volume, "axial", box_ijk=_box(LIVER_SLICE))
    assert logic.engine.encoder.describe() == "torch"
    logic.runtime = "openvino"
    assert not logic.is_ready()  # the effect shows its loading dialog then
    logic.load()
    assert logic.is_ready() and logic.engine.encoder.describe() == "openvino (f32)"
    edit = logic.prompt_slice(ct_volume, "axial", box_ijk=_box(LIVER_SLICE))
    assert dice(edit.mask, reference.mask) > 0.99
    logic.precision = (
        "int8"  # no INT8 encoder calibrated in this cache: one line, the old engine kept
    )
    assert not logic.is_ready()
    with pytest.raises(ModelError, match="no INT8 encoder has been calibrated"):
        logic.load()
    logic.precision = "bf16"
    logic.runtime = "torch"
    with pytest.raises(PromptError, match="precision bf16 applies to the openvino runtime"):
        logic.load()
    logic.precision = "auto"
    logic.runtime = "tpu"
    with pytest.raises(PromptError, match="runtime 'tpu': choose one of auto, torch, openvino"):
        logic.load()


def test_a_decoder_export_runs_off_the_clicking_thread(
    ct_volume, logic, tmp_path, monkeypatch
) -> None:
    """The decoder follows the runtime; when it must be exported or compiled first (the first click
    with a new adapter), that runs on a worker while the clicking thread pumps."""
    from minisam.runtime.decoder import CompiledDecoder

    monkeypatch.setenv("MINISAM_CACHE", str(tmp_path))
    logic.runtime = "openvino"
    logic.load()
    assert logic.engine.decoder.describe().startswith("openvino (") and logic.engine.decoder.ready()
    fresh = CompiledDecoder(logic.engine.sam, "openvino")  # as after an adapter switch: not loaded
    logic.engine.decoder = fresh
    assert not fresh.ready()
    threads, prepare = [], fresh.prepare

    def recording():
        threads.append(threading.current_thread())
        return prepare()

    monkeypatch.setattr(fresh, "prepare", recording)
    pumped: list[int] = []
    edit = logic.prompt_slice(
        ct_volume, "axial", box_ijk=_box(LIVER_SLICE), pump=lambda: pumped.append(1)
    )
    assert threads[0] is not threading.current_thread() and fresh.ready()
    assert edit.mask.any() and fresh.torch_calls == 0


def test_batch_script_takes_the_runtime(
    batch, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(f'[{{"slice": {LIVER_SLICE}, "box": {list(LIVER_BOX)}}}]')
    common = ["--input", str(shared_data / CT), "--prompts", str(prompts), "--model", SMALL_MODEL]
    out = tmp_path / "liver.seg.nrrd"
    assert batch.run([*common, "--output", str(out), "--runtime", "torch", "--propagate"]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("image encoder: torch)") and out.is_file()
    code = batch.run([*common, "--output", str(tmp_path / "x.seg.nrrd"), "--runtime", "tpu"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "--runtime 'tpu': choose one of auto, torch, openvino, onnxruntime" in error
    code = batch.run([*common, "--output", str(tmp_path / "x.seg.nrrd"), "--precision", "int4"])
    error = capsys.readouterr().err
    assert code == 2 and "--precision 'int4': choose one of auto, f32, bf16, int8" in error
    assert not (tmp_path / "x.seg.nrrd").exists()
