"""Adapter choice in MiniSAMSegmentLogic: an HC18 ultrasound image as a volume node, the built-in us_hc18.

Behaviour only (the default model and us_hc18 may be re-trained): "auto" picks us_hc18 for DICOM Modality
US and it beats the base model on Dice from one click (what the adapter is trained for: the default's box
on a fetal head is already ~0.96); CT gets no adapter; switching adapters never reuses embeddings of
another adapter; bad choices are one-line errors that leave the model as it was.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import slicer
from MiniSAMSegmentLib.logic import AdapterChoice
from MiniSAMSegmentLib.mrml_context import mrml_context

from minisam.errors import ModelError
from minisam.metrics import dice
from minisam.prompts import Prompt, interior_point

CASE = "022_HC"  # in docs/eval/us_hc18.csv: held out from the default and us_hc18; one click on it is hard
US_DATA = "hc18_fetal_head_us"


@pytest.fixture(scope="module")
def default_logic():
    """A logic with the embedded default by name: the built-in adapters are made for it."""
    from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic

    return MiniSAMSegmentLogic("default", device="cpu")


@pytest.fixture(scope="module")
def us_case(shared_data: Path, default_logic, tmp_path_factory):
    """The shared logic on an ultrasound volume node (DICOM Modality "US"), with an empty user library
    (so only the built-in adapters count), one click inside the head, the truth, and the masks without /
    with auto."""
    import SimpleITK as sitk
    from MiniSAMSegmentLib.logic import volume_arrays

    from minisam.adapters import AdapterLibrary

    image = sitk.GetArrayFromImage(
        sitk.ReadImage(str(shared_data / US_DATA / "images" / f"{CASE}.png"))
    )
    truth = sitk.ReadImage(str(shared_data / US_DATA / "masks_filled" / f"{CASE}_mask.png"))
    truth = sitk.GetArrayFromImage(truth) > 0
    context = mrml_context()
    volume = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", CASE)
    slicer.util.updateVolumeFromArray(volume, image[None])  # one axial slice, (1, H, W)
    volume.SetAttribute("DICOM.Modality", "US")
    assert volume_arrays(volume).array.shape == (1, *image.shape)

    logic = default_logic
    saved = (logic.adapter, logic.library, logic.modality)
    logic.library = AdapterLibrary(tmp_path_factory.mktemp("user_adapters"))
    logic.modality = "auto"
    case = {"context": context, "volume": volume, "truth": truth, "logic": logic}
    case["click"] = interior_point(truth)
    case["prompt"] = Prompt(points=case["click"][None], labels=np.array([1]))
    logic.adapter = "none"
    case["none"] = logic.predict_on_slice(volume, 0, 0, case["prompt"])[0]
    case["none_description"] = logic.describe()
    misses = logic.cache.misses
    logic.adapter = "auto"
    case["auto"] = logic.predict_on_slice(volume, 0, 0, case["prompt"])[0]
    case["auto_misses"] = logic.cache.misses - misses
    case["auto_description"] = logic.describe()
    yield case
    logic.adapter, logic.library, logic.modality = saved
    logic.forget(volume)


def test_auto_picks_us_hc18_for_ultrasound(us_case) -> None:
    logic, volume, truth = us_case["logic"], us_case["volume"], us_case["truth"]
    assert us_case["none_description"] == "model default"
    assert us_case["auto_description"] == "model default + adapter us_hc18"
    assert us_case["auto_misses"] == 1  # the base model's embedding was not reused for the adapter
    logic.adapter = "auto"
    chosen = logic.adapter_for(volume)
    assert isinstance(chosen, AdapterChoice) and chosen.name == "us_hc18"
    assert "us_hc18" in logic.available_adapters()
    assert not np.array_equal(us_case["auto"], us_case["none"])
    # Measured 2026-12-03 with the default v2 (IoU head tuned) and us_hc18 retrained on it: one click on
    # this hard head 0.866 without, 0.851 with the adapter (v1 and its adapter: 0.51 -> 0.87); v2 needs no
    # adapter for a click on a fetal head, the adapter adds box quality (adapters/README.md).
    assert dice(us_case["auto"], truth) > 0.8 and dice(us_case["none"], truth) > 0.8


def test_switching_auto_none_auto_matches_fresh_runs(us_case) -> None:
    logic, volume, prompt = us_case["logic"], us_case["volume"], us_case["prompt"]
    keys = set()
    for choice in ("none", "auto", "none", "auto", "us_hc18"):
        logic.adapter = choice
        mask = logic.predict_on_slice(volume, 0, 0, prompt)[0]
        np.testing.assert_array_equal(mask, us_case["none" if choice == "none" else "auto"])
        keys.add(logic.session(volume).key)
    assert len(keys) == 2  # one cache key per model state: base, us_hc18 (by name or auto alike)
    # Without cached embeddings: the base model really is back after the adapter ran.
    logic.adapter = "none"
    logic.forget(volume)
    np.testing.assert_array_equal(logic.predict_on_slice(volume, 0, 0, prompt)[0], us_case["none"])
    assert logic.active_adapter is None


def test_auto_on_ct_uses_no_adapter(us_case, ct_volume) -> None:
    logic = us_case["logic"]
    logic.adapter = "auto"
    logic.session(us_case["volume"])
    assert logic.active_adapter == "us_hc18"
    assert logic.adapter_for(ct_volume) is None
    assert logic.session(ct_volume).key[-1] == "base"  # the session activates the base model
    assert logic.active_adapter is None and logic.describe() == "model default"


def test_an_adapter_switch_never_lets_queued_embeddings_run_under_the_new_adapter(
    us_case, ct_volume, monkeypatch
) -> None:
    """CT slices queued in the background (base model) while the ultrasound volume switches the model to
    us_hc18: each CT embedding is computed by the base model, none under the adapter."""
    logic = us_case["logic"]
    logic.adapter = "auto"
    ct = logic.session(ct_volume)
    assert logic.active_adapter is None
    engine, switcher = logic.engine, logic._switchers[logic.model_spec]
    embed, entered, release, calls = engine.embed, threading.Event(), threading.Event(), []

    def recording(rgb):  # the first call (a CT slice on the worker) is held until released
        calls.append((rgb.shape[:2], switcher.active))
        entered.set()
        assert release.wait(300)
        return embed(rgb)

    monkeypatch.setattr(engine, "embed", recording)
    ct.focus(0, 10)
    assert entered.wait(300) and len(ct.precompute.queued) == 4
    with ThreadPoolExecutor(1) as other:
        switched = other.submit(logic.session, us_case["volume"])  # activates us_hc18
        release.set()
        us = switched.result(300)
    assert logic.active_adapter == "us_hc18" and us.key[-1] != "base"
    ct_calls = [active for shape, active in calls if shape == ct.slice_shape(0)]
    assert ct_calls and set(ct_calls) == {None}  # every CT slice by the base model
    assert ct.precompute.queued == ()


def _install_copy(logic, name: str, **metadata) -> Path:
    """us_hc18 installed again as ``name`` in the logic's user library, its metadata changed."""
    folder = Path(logic.library.root) / name
    shutil.copytree(logic.library.path("us_hc18"), folder)
    meta = json.loads((folder / "minisam_adapter.json").read_text())
    meta.update(name=name, **metadata)
    (folder / "minisam_adapter.json").write_text(json.dumps(meta))
    return folder


def test_auto_on_a_ct_lung_window_uses_the_ct_adapter(us_case, ct_volume) -> None:
    """Without a DICOM tag the family of the normalisation preset decides: "ct-lung" is CT, here as on
    the command line and in evaluation (test_cli_adapters, test_evaluate)."""
    logic = us_case["logic"]
    folder = _install_copy(logic, "ct_test", modality="CT")
    try:
        logic.adapter = "auto"
        for preset, expected in (("ct-lung", "ct_test"), ("ct-bone", "ct_test"), ("raw", None)):
            logic.modality = preset
            chosen = logic.adapter_for(ct_volume)
            assert (chosen and chosen.name) == expected
    finally:
        logic.modality = "auto"
        shutil.rmtree(folder)


def test_bad_adapter_is_one_line_and_leaves_the_model(us_case, tmp_path: Path) -> None:
    logic, volume, prompt = us_case["logic"], us_case["volume"], us_case["prompt"]
    logic.adapter = "auto"
    logic.session(volume)
    # An adapter trained on another base, installed next to the built-in one.
    foreign = _install_copy(logic, "us_other", base_hash="0123456789abcdef")
    try:
        assert "us_other" not in logic.available_adapters()
        for choice, message in (
            ("no_such_adapter", "is not installed"),
            ("us_other", "trained for base"),
            (str(foreign), "trained for base"),
            (str(tmp_path / "missing"), "does not exist"),
            ("bad name!", "is invalid"),
        ):
            logic.adapter = choice
            with pytest.raises(ModelError, match=message) as error:
                logic.predict_on_slice(volume, 0, 0, prompt)
            assert "\n" not in str(error.value)
            assert logic.active_adapter == "us_hc18"  # left as it was
    finally:
        shutil.rmtree(foreign)
    logic.adapter = "none"
    np.testing.assert_array_equal(logic.predict_on_slice(volume, 0, 0, prompt)[0], us_case["none"])
    logic.adapter = "auto"
    np.testing.assert_array_equal(logic.predict_on_slice(volume, 0, 0, prompt)[0], us_case["auto"])


def test_batch_script_with_adapter_us_hc18(us_case, monkeypatch, capsys, tmp_path: Path) -> None:
    import importlib.util

    import SimpleITK as sitk
    from MiniSAMSegmentLib.segment_io import segment_array
    from slicer_cases import BATCH_SCRIPT

    monkeypatch.setenv("MINISAM_ADAPTERS", str(tmp_path / "no_user_adapters"))
    volume = us_case["volume"]
    path = tmp_path / f"{CASE}.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(slicer.util.arrayFromVolume(volume)), str(path))
    prompts = tmp_path / "prompts.json"
    click = [float(v) for v in us_case["click"]]
    prompts.write_text(json.dumps([{"slice": 0, "points": [click]}]))
    spec = importlib.util.spec_from_file_location("batch_segment_adapter", BATCH_SCRIPT)
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    out = tmp_path / "head.seg.nrrd"
    argv = ["--input", str(path), "--prompts", str(prompts), "--output", str(out)]
    assert batch.main([*argv, "--adapter", "us_hc18", "--modality", "us"]) == 0
    printed = capsys.readouterr().out
    assert "model default + adapter us_hc18" in printed, printed
    loaded = us_case["context"].scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    us_case["context"].scene.AddNode(storage)
    storage.SetFileName(str(out))
    assert storage.ReadData(loaded)
    reference = us_case["context"].load_volume(path)  # the file's geometry (LPS on disk)
    labels = segment_array(loaded, loaded.GetSegmentation().GetNthSegmentID(0), reference)
    truth = us_case["truth"]
    # the adapter's mask (as the logic's auto gave it), not the base model's
    assert dice(labels[0], us_case["auto"]) > 0.99 > dice(labels[0], us_case["none"])
    assert dice(labels[0], truth) > 0.8
