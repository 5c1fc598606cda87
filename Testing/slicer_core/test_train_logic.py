"""MiniSAMTrain's logic on the real BraTS FLAIR volume: annotated slices -> training process -> library."""

from __future__ import annotations

import ast
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk
from MiniSAMSegmentLib.segment_io import segment_array, write_mask_to_segment
from slicer_cases import REPO
from test_module_sources import _attribute_chains, _imports

from minisam.errors import InputError, MiniSAMError

TRAIN_DIR = REPO / "MiniSAMTrain"
if str(TRAIN_DIR) not in sys.path:
    sys.path.insert(0, str(TRAIN_DIR))

from MiniSAMTrainLib.train_logic import (  # noqa: E402
    MIN_ANNOTATED_SLICES,
    MiniSAMTrainLogic,
    TrainingProcess,
    annotated_slices,
    require_enough,
    slice_blocks,
    suggested_modality,
)
from MiniSAMTrainLib.training_process import write_training_data  # noqa: E402
from model_files import SMALL_MODEL  # noqa: E402

BRATS = "brats2021_samplecase_sammed3d/BraTS2021_01646"  # 104 x 160 x 160, edema on K slices 39..85
KEPT = (
    44,
    45,
    52,
    53,
    60,
    61,
    70,
    78,
)  # the slices left annotated; the segment is erased elsewhere
# 6 training slices -> 2 steps per epoch, on the small test model
TINY = {"rank": 2, "batch_size": 3, "epochs": 1, "model": SMALL_MODEL}


@pytest.fixture()
def flair(context, shared_data: Path):
    return context.load_volume(shared_data / f"{BRATS}_flair.nii.gz")


@pytest.fixture()
def edema(context, flair, shared_data: Path):
    """A segmentation holding the BraTS edema label, erased on all slices but KEPT."""
    labelmap = context.volumes_logic.AddArchetypeVolume(
        str(shared_data / f"{BRATS}_label_edema.nii.gz"), "edema", 1
    )
    node = context.new_segmentation(flair, "annotations")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    context.scene.RemoveNode(labelmap)
    node.edema_id = node.GetSegmentation().GetNthSegmentID(0)
    _erase_all_but(node, flair, KEPT)
    return node


def _erase_all_but(node, volume, slices) -> None:
    labels = segment_array(node, node.edema_id, volume)
    keep = np.zeros(labels.shape[0], bool)
    keep[list(slices)] = True
    labels[~keep] = 0
    write_mask_to_segment(node, node.edema_id, volume, labels, mode="replace")


def _segment_snapshot(node, volume) -> dict:
    segmentation = node.GetSegmentation()
    return {
        segmentation.GetNthSegmentID(i): segment_array(
            node, segmentation.GetNthSegmentID(i), volume
        )
        for i in range(segmentation.GetNumberOfSegments())
    }


def _assert_unchanged(node, volume, before: dict) -> None:
    after = _segment_snapshot(node, volume)
    assert after.keys() == before.keys()
    for segment_id, labels in before.items():
        np.testing.assert_array_equal(after[segment_id], labels)


def _run(process: TrainingProcess, timeout: float = 180.0, cancel_after_first_step: bool = False):
    """Start ``process`` and poll it as the panel's QTimer does; (events, states seen while it ran)."""
    events, states = [], []
    process.start()
    deadline = time.monotonic() + timeout
    while not process.done and time.monotonic() < deadline:
        events += process.poll()
        states.append(process.state)
        if cancel_after_first_step and any(e["event"] == "step" for e in events):
            process.cancel()
        time.sleep(0.05)  # the panel's timer interval; the process runs meanwhile
    assert process.done, f"the training process did not end within {timeout} s"
    return events, states


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_annotated_slices_are_exactly_the_drawn_ones(context, flair, edema) -> None:
    segmentation = edema.GetSegmentation()
    core = segmentation.AddEmptySegment("", "core")
    mask = np.zeros((160, 160), bool)
    mask[70:80, 60:75] = True
    write_mask_to_segment(edema, core, flair, mask, axis=0, index=52)  # a slice edema has too

    found = annotated_slices(flair, edema, [edema.edema_id, core], axis=0)
    assert found.slices == KEPT and len(found) == 8
    assert found.by_segment == {edema.edema_id: KEPT, core: (52,)}
    assert found.samples == 9
    assert found.describe() == "8 annotated K slices (9 samples: edema 8, core 1)"
    require_enough(found)
    sideways = annotated_slices(flair, edema, [core], axis=2)  # I slices through the core block
    assert sideways.slices == tuple(range(60, 75)) and sideways.axis == 2
    assert suggested_modality(flair) == "MR"  # no DICOM tag: FLAIR values are not HU


def test_blocks_keep_neighbouring_slices_together() -> None:
    blocks = slice_blocks(KEPT)
    assert len(set(blocks.values())) == 4 and blocks[44] == blocks[45] == "slices 44-45"
    assert blocks[70] == blocks[78] != blocks[61]
    assert len(set(slice_blocks(range(4)).values())) == 2
    runs = slice_blocks(range(39, 86))
    assert len(set(runs.values())) == 5 and runs[39] == "slices 39-48"


def test_plan_blocks_hold_the_normalised_annotated_slices(flair, edema, tmp_path: Path) -> None:
    from minisam.intensity import normalize_intensity, to_rgb
    from minisam.training.manifest import read_training_manifest, samples_from_manifest

    plan = MiniSAMTrainLogic().prepare(flair, edema, [edema.edema_id], "MR", library_root=tmp_path)
    assert [b.slices for b in plan.blocks] == [(44, 45), (52, 53), (60, 61), (70, 78)]
    assert plan.samples == 8 and plan.summary["annotated_slices"] == list(KEPT)
    volume = slicer.util.arrayFromVolume(flair)
    expected = to_rgb(normalize_intensity(volume, "mr")[70]).astype(np.uint8)
    # What the command reads back from the exported files is exactly what MiniSAMSegment would see.
    manifest = write_training_data(plan, tmp_path / "slices")
    samples = samples_from_manifest(read_training_manifest(manifest))
    assert len(samples) == 8 and len({s.case for s in samples}) == 4  # a block is one case
    (at_70,) = [s for s in samples if np.array_equal(s.image, expected)]
    np.testing.assert_array_equal(at_70.mask, segment_array(edema, edema.edema_id, flair)[70] != 0)
    arguments = plan.command_arguments(tmp_path / "m.csv", tmp_path / "out", tmp_path / "s.json")
    assert {"--progress-json", "--quiet"} <= set(arguments) and "--install" not in arguments


def test_training_process_installs_an_adapter_and_leaves_the_segmentation_alone(
    context, flair, edema, tmp_path: Path
) -> None:
    from minisam.adapters import AdapterLibrary, read_adapter
    from minisam.model_loader import load_model

    before = _segment_snapshot(edema, flair)
    plan = MiniSAMTrainLogic().prepare(
        flair, edema, [edema.edema_id], "MR", library_root=tmp_path / "library", **TINY
    )
    process = TrainingProcess(plan)
    assert process.state.phase == "waiting" and not process.done
    events, states = _run(process)

    assert process.error is None, process.error
    result = process.result
    assert not result.cancelled and result.name == "mr_BraTS2021_01646_flair"
    assert (result.train_slices, result.val_slices) == (6, 2)  # one block of two held back
    assert [e["phase"] for e in events if e["event"] == "phase"] == [
        "reading data", "loading model", "training", "saving",
    ]  # fmt: skip
    steps = [(e["step"], e["total"], e["epoch"]) for e in events if e["event"] == "step"]
    assert steps == [(1, 2, 0), (2, 2, 0)]
    validations = [e["val_dice"] for e in events if e["event"] == "validation"]
    assert len(validations) == 1 and 0.0 <= validations[0] <= 1.0
    assert process.validation_history == validations
    assert any(s.phase == "training" and 0 < s.fraction < 1 for s in states)  # seen live, mid-run
    assert process.state.done and process.state.phase == "finished"
    assert process.state.fraction == 1.0
    assert process.state.val_dice == pytest.approx(validations[-1])
    assert process.pid != os.getpid() and _gone(process.pid)
    assert not process.folder.exists()  # the exported slices and the command's output are removed

    base_hash = load_model(SMALL_MODEL).base_hash()
    (info,) = AdapterLibrary(tmp_path / "library", builtin=None).list()
    assert (info.name, info.modality, info.base_hash, info.path) == (
        result.name, "MR", base_hash, result.path,
    )  # fmt: skip
    assert info.rank == 2 and info.trainable_params == result.trainable_params > 0
    meta = read_adapter(info.path).metadata
    assert meta.training_data["annotated_slices"] == list(KEPT)
    assert meta.training_data["source"].startswith("3D Slicer: volume 'BraTS2021_01646_flair'")
    assert meta.training_data["train_slices"] + meta.training_data["val_slices"] == 8
    assert meta.metrics["zero_shot_val_dice"] == pytest.approx(result.zero_shot_val_dice, abs=1e-4)
    assert result.best_val_dice >= result.zero_shot_val_dice
    assert "installed" in result.describe()

    _assert_unchanged(edema, flair, before)
    assert context.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # no temporary
    again = MiniSAMTrainLogic().prepare(
        flair, edema, [edema.edema_id], "MR", library_root=tmp_path / "library"
    )
    assert again.name == "mr_BraTS2021_01646_flair_2"  # never overwrites an installed adapter


def test_cancel_after_the_first_step_ends_the_process_and_installs_nothing(
    context, flair, edema, tmp_path: Path
) -> None:
    before = _segment_snapshot(edema, flair)
    plan = MiniSAMTrainLogic().prepare(
        flair, edema, [edema.edema_id], "MR", library_root=tmp_path / "library",
        **dict(TINY, epochs=6),
    )  # fmt: skip
    process = TrainingProcess(plan)
    events, _ = _run(process, cancel_after_first_step=True)
    assert process.error is None, process.error
    assert process.result.cancelled and process.result.path is None
    assert process.state.phase == "cancelled" and process.state.done
    assert sum(e["event"] == "step" for e in events) < 6 * 2  # stopped well before the 12 steps
    assert not process.running and _gone(process.pid)
    assert not (tmp_path / "library").exists()  # nothing installed, no half-written folder
    assert not process.folder.exists()
    assert "nothing installed" in process.result.describe()
    _assert_unchanged(edema, flair, before)


@pytest.mark.skipif(os.name != "posix", reason="a shell script stands in for Python")
def test_cancel_kills_a_process_that_ignores_terminate(flair, edema, tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn-python"
    stubborn.write_text(
        "#!/bin/sh\ntrap '' TERM\n"
        'echo \'{"event": "phase", "phase": "training"}\'\n'
        "while true; do sleep 1; done\n"
    )
    stubborn.chmod(0o755)
    plan = MiniSAMTrainLogic().prepare(
        flair, edema, [edema.edema_id], "MR", library_root=tmp_path / "library"
    )
    process = TrainingProcess(plan, python=str(stubborn)).start()
    deadline = time.monotonic() + 30
    while process.state.phase != "training" and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.02)
    assert process.running and process.state.phase == "training"
    started = time.monotonic()
    process.cancel(timeout=1.0)
    assert time.monotonic() - started >= 1.0  # it was asked first, and ignored that
    assert process._process.returncode == -signal.SIGKILL and _gone(process.pid)
    assert process.result.cancelled and not (tmp_path / "library").exists()
    assert not process.folder.exists()


@pytest.mark.parametrize(
    ("change", "extra", "message"),
    [
        ({"model": "no_such_model"}, [], "no_such_model"),  # fails inside the command: JSON error
        ({}, ["--no-such-option"], "unrecognized arguments: --no-such-option"),  # argparse: stderr
    ],
)
def test_a_failing_run_surfaces_one_line_and_installs_nothing(
    flair, edema, tmp_path: Path, change, extra, message
) -> None:
    plan = MiniSAMTrainLogic().prepare(
        flair,
        edema,
        [edema.edema_id],
        "MR",
        library_root=tmp_path / "library",
        **{**TINY, **change},
    )
    process = TrainingProcess(plan, extra_arguments=extra).start()
    assert process.wait(timeout=180)
    assert process.result is None and isinstance(process.error, MiniSAMError)
    text = str(process.error)
    assert text.startswith("training failed: ") and message in text and "\n" not in text
    assert "Traceback" not in text and process.state.phase == "failed"
    assert not (tmp_path / "library").exists() and not process.folder.exists()


def test_a_missing_interpreter_is_one_line_and_leaves_no_folder(flair, edema, tmp_path) -> None:
    plan = MiniSAMTrainLogic().prepare(flair, edema, [edema.edema_id], "MR", library_root=tmp_path)
    process = TrainingProcess(plan, python=str(tmp_path / "no-such-python"))
    with pytest.raises(MiniSAMError, match="cannot start the training process") as error:
        process.start()
    assert "\n" not in str(error.value) and not process.folder.exists() and not process.running


def test_qat_goes_through_the_core(flair, edema, tmp_path: Path) -> None:
    logic = MiniSAMTrainLogic()
    options = dict(TINY, epochs=1, library_root=tmp_path)
    with pytest.raises(InputError, match="choose AdaLoRA"):
        logic.prepare(flair, edema, [edema.edema_id], "MR", "lora", qat=True, **options)
    from minisam.adapters import read_adapter

    result = logic.train(flair, edema, [edema.edema_id], "MR", "adalora", qat=True, **options)
    assert not result.cancelled and result.quant != "nf4"
    meta = read_adapter(result.path).metadata
    assert meta.spec["method"] == "adalora" and meta.training_data["quant"] == result.quant
    assert "qat" in meta.metrics


def _single_line(exc_info) -> str:
    message = str(exc_info.value)
    assert isinstance(exc_info.value, MiniSAMError) and "\n" not in message
    return message


def test_no_or_too_few_annotated_slices_are_refused(flair, edema, tmp_path: Path) -> None:
    logic = MiniSAMTrainLogic()
    empty = edema.GetSegmentation().AddEmptySegment("", "nothing")
    with pytest.raises(InputError) as err:
        logic.prepare(flair, edema, [empty], "MR", library_root=tmp_path)
    assert "no K slice of volume 'BraTS2021_01646_flair' has 'nothing' drawn" in _single_line(err)
    _erase_all_but(edema, flair, KEPT[: MIN_ANNOTATED_SLICES - 1])
    before = _segment_snapshot(edema, flair)
    with pytest.raises(InputError) as err:
        logic.train(flair, edema, [edema.edema_id], "MR", library_root=tmp_path)
    assert "only 3 annotated K slices" in _single_line(err) and "at least 4" in str(err.value)
    _assert_unchanged(edema, flair, before)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("node_class", "shape", "message"),
    [
        ("vtkMRMLVectorVolumeNode", (6, 8, 8, 3), "3 values per voxel"),
        ("vtkMRMLScalarVolumeNode", (6, 8, 8, 5), "5 values per voxel"),  # 5 frames in one node
    ],
)
def test_vector_and_4d_volumes_are_refused(context, edema, node_class, shape, message) -> None:
    node = context.scene.AddNewNodeByClass(node_class, "multi")
    image = vtk.vtkImageData()
    image.SetDimensions(shape[2], shape[1], shape[0])
    image.AllocateScalars(vtk.VTK_FLOAT, shape[3])
    node.SetAndObserveImageData(image)
    with pytest.raises(InputError) as err:
        annotated_slices(node, edema, [edema.edema_id])
    assert message in _single_line(err) and "scalar 3D volume" in str(err.value)


def _other_grid(context, flair, matrix: np.ndarray):
    """A volume node with the FLAIR voxels on another grid (IJK-to-RAS ``matrix``)."""
    node = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, slicer.util.arrayFromVolume(flair).copy())
    return node


def test_segmentation_on_another_geometry_is_refused_or_resampled(context, flair, edema) -> None:
    ijk_to_ras = vtk.vtkMatrix4x4()
    flair.GetIJKToRASMatrix(ijk_to_ras)
    matrix = slicer.util.arrayFromVTKMatrix(ijk_to_ras)
    labels = segment_array(edema, edema.edema_id, flair)

    far = matrix.copy()
    far[:3, 3] += 1000.0  # a metre away: no voxel in common
    elsewhere = _other_grid(context, flair, far)
    shifted = context.new_segmentation(elsewhere, "elsewhere")
    shifted_id = write_mask_to_segment(shifted, "", elsewhere, labels, mode="replace")
    with pytest.raises(InputError) as err:
        annotated_slices(flair, shifted, [shifted_id])
    assert "lies outside volume 'BraTS2021_01646_flair'" in _single_line(err)

    center = matrix @ np.r_[np.array([160, 160, 104]) / 2, 1.0]
    angle = np.radians(20)
    turn = np.eye(4)  # 20 degrees about the A axis, around the volume's centre
    turn[np.ix_([0, 2], [0, 2])] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    turn[:3, 3] = center[:3] - turn[:3, :3] @ center[:3]
    tilted_volume = _other_grid(context, flair, turn @ matrix)
    tilted = context.new_segmentation(tilted_volume, "tilted")
    tilted_id = write_mask_to_segment(tilted, "", tilted_volume, labels, mode="replace")
    with pytest.raises(InputError) as err:
        annotated_slices(flair, tilted, [tilted_id], axis=0)
    assert "not parallel to the K slices" in _single_line(err)
    # The J slices (normal A) stay parallel under that turn: resampled onto the FLAIR grid, accepted.
    assert len(annotated_slices(flair, tilted, [tilted_id], axis=1)) > 0

    finer = matrix.copy()
    finer[:3, :3] /= 2  # same orientation, half the voxel size: resampled onto the FLAIR grid
    fine_volume = _other_grid(context, flair, finer)
    fine = context.new_segmentation(fine_volume, "fine")
    fine_id = write_mask_to_segment(fine, "", fine_volume, labels, mode="replace")
    assert len(annotated_slices(flair, fine, [fine_id])) > 0


def test_label_grid_is_compared_and_a_segment_on_another_grid_resampled_by_position(
    context, flair, edema, tmp_path: Path
) -> None:
    """The label-grid rule of train-adapter (minisam.geometry.grid_mismatch): a segment of the same
    shape on another origin, direction or spacing is not taken voxel for voxel but resampled onto the
    volume where Slicer shows it, and the panel line and the adapter's source info say so."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    flair.GetIJKToRASMatrix(ijk_to_ras)
    matrix = slicer.util.arrayFromVTKMatrix(ijk_to_ras)
    labels = segment_array(edema, edema.edema_id, flair)

    same = annotated_slices(flair, edema, [edema.edema_id])
    assert same.slices == KEPT and same.resampled == {} and "resampled" not in same.describe()

    def on_grid(grid: np.ndarray, voxels: np.ndarray, name: str):
        volume = _other_grid(context, flair, grid)
        segmentation = context.new_segmentation(volume, name)
        return segmentation, write_mask_to_segment(segmentation, "", volume, voxels, mode="replace")

    # Same shape, K axis reversed: the same anatomy, so the same slices (voxel for voxel: mirrored).
    flipped = matrix.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] = (matrix @ np.r_[0, 0, labels.shape[0] - 1, 1.0])[:3]
    node, segment_id = on_grid(flipped, labels[::-1].copy(), "flipped")
    found = annotated_slices(flair, node, [segment_id])
    assert found.slices == KEPT
    assert "direction" in found.resampled[segment_id]
    assert "'MiniSAM' resampled onto the volume's voxels (grid direction" in found.describe()

    # Same shape and voxels, origin 2.4 slices further along K: the drawing lies 2 slices higher.
    moved = matrix.copy()
    moved[:3, 3] += 2.4 * matrix[:3, 2]
    node, segment_id = on_grid(moved, labels, "moved")
    found = annotated_slices(flair, node, [segment_id])
    assert found.slices == tuple(k + 2 for k in KEPT)
    assert found.resampled[segment_id].startswith("origin (")
    plan = MiniSAMTrainLogic().prepare(
        flair, node, [segment_id], "MR", library_root=tmp_path, **TINY
    )
    assert plan.summary["resampled"] == {"MiniSAM": found.resampled[segment_id]}

    finer = matrix.copy()
    finer[:3, :3] /= 2  # the segmentation's grid oversampled by 2, as Segment Editor can
    node, segment_id = on_grid(finer, labels, "finer")
    assert annotated_slices(flair, node, [segment_id]).resampled[segment_id].startswith("spacing")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"modality": "banana"}, "modality 'banana' is not known"),
        ({"method": "dora"}, "method must be one of lora, adalora"),
        ({"rank": 0}, "rank must be >= 1"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"segmentIds": []}, "select at least one segment"),
        ({"segmentIds": ["nope"]}, "segment 'nope' is not in 'annotations'"),
        ({"segmentationNode": None}, "select a segmentation"),
        ({"volumeNode": None}, "has no image data"),
    ],
)
def test_bad_options_are_one_line_errors(flair, edema, tmp_path, arguments, message) -> None:
    call = {
        "volumeNode": flair,
        "segmentationNode": edema,
        "segmentIds": [edema.edema_id],
        "modality": "MR",
        "library_root": tmp_path,
    }
    with pytest.raises(InputError) as err:
        MiniSAMTrainLogic().prepare(**dict(call, **arguments))
    assert message in _single_line(err)


def test_train_logic_is_qt_free_and_uses_known_slicer_names(shared_data: Path) -> None:
    logic_files = sorted((TRAIN_DIR / "MiniSAMTrainLib").glob("*.py"))
    assert len(logic_files) == 4
    for path in logic_files:
        imported = {name.split(".")[0] for name in _imports(path)}
        assert not imported & {"qt", "ctk"}, path.name
    assert "qt" not in sys.modules
    known = set((shared_data.parent / "slicer-api" / "names.txt").read_text().split())
    module = TRAIN_DIR / "MiniSAMTrain.py"
    used = {
        f"slicer.util.{n}"
        for p in [module, *logic_files]
        for n in _attribute_chains(p, ("slicer", "util"))
    }
    qt_object = {"connect", "setToolTip"}  # QObject / QWidget, not Slicer API
    for prefix in (("self", "volumeSelector"), ("self", "segmentationSelector"), ("selector",)):
        chains = _attribute_chains(module, prefix) - qt_object
        used |= {f"qMRMLNodeComboBox.{n}" for n in chains}
    assert {"qMRMLNodeComboBox.setMRMLScene", "slicer.util.tryWithErrorDisplay"} <= used
    assert used <= known, sorted(used - known)
    assert "qt" in _imports(module) and ast.parse(module.read_text())


def test_a_failed_package_installation_is_one_clear_line(monkeypatch) -> None:
    import subprocess

    from MiniSAMSegmentLib.dependencies import InstallError
    from MiniSAMTrainLib import train_logic

    monkeypatch.setitem(train_logic.TRAINING_REQUIREMENTS, "no_such_pkg_minisam", "no-such-pkg>=1")

    def failing_pip(requirement: str) -> None:
        raise subprocess.CalledProcessError(1, ["pip", "install", requirement], "ERROR: no match")

    with pytest.raises(InstallError) as error:
        train_logic.ensure_training_packages(confirm=lambda text: True, pip_install=failing_pip)
    message = str(error.value)
    assert message.startswith("installing no-such-pkg>=1 failed (") and "\n" not in message


def test_suggested_slices_are_the_least_confident_unannotated_ones(
    context, flair, edema, segment_logic
) -> None:
    from MiniSAMTrainLib.suggestions import jump_to, score_slices, suggest_slices
    from MiniSAMTrainLib.train_logic import read_annotations

    found, masks = read_annotations(flair, edema, [edema.edema_id], axis=0)
    suggestions = suggest_slices(segment_logic, flair, found, masks, count=4, margin=3, limit=10)
    assert len(suggestions) == 4
    confidences = [s.confidence for s in suggestions]
    assert confidences == sorted(confidences) and all(0.0 <= c <= 1.0 for c in confidences)
    assert all(s.index not in KEPT and 41 <= s.index <= 81 for s in suggestions)
    assert {s.segment for s in suggestions} == {"edema"}
    every = score_slices(segment_logic.session(flair), found, masks, margin=3, limit=10)
    assert [i for i, _ in every[:4]] == [s.index for s in suggestions]  # the head of the ranking
    assert len(every) == 10 and max(c for _, (c, *_) in every) >= confidences[-1]
    assert "K slice" in suggestions[0].describe()

    # Choosing one centres the slice views on that slice.
    red = context.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    jump_to(context.scene, suggestions[0])
    offset = [red.GetSliceToRAS().GetElement(row, 3) for row in range(3)]
    np.testing.assert_allclose(offset, suggestions[0].ras, atol=1e-3)
    ijk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(flair))) @ [*offset, 1.0]
    assert round(ijk[2]) == suggestions[0].index  # that RAS point lies on the suggested K slice
    with pytest.raises(InputError, match="count must be >= 1"):
        suggest_slices(segment_logic, flair, found, masks, count=0)
    # The panel's call: the model by name, the adapter for the modality, options passed on.
    train = MiniSAMTrainLogic()
    (first,) = train.suggest(
        flair, edema, [edema.edema_id], 0, modality="MR", count=1, margin=1, limit=2
    )
    assert first.index in (43, 79) and first.segment == "edema"  # limit 2: both ends of 43..79

    # Issue 16, item 6: what the suggestions hold (the volume's normalised copy, its embeddings) goes
    # with the volume node, the scene and the module (cleanup), as in the effect.
    held = train._suggestion_logic
    second = context.load_volume(flair.GetStorageNode().GetFileName(), "second")
    held.session(second)
    assert held.held_volume_ids() == sorted([flair.GetID(), second.GetID()])
    context.scene.RemoveNode(second)
    assert held.held_volume_ids() == [flair.GetID()]
    context.scene.Clear(0)
    assert held.held_volume_ids() == [] and len(held.cache) == 0 and held.model_is_loaded()
    train.release()
    assert not held.model_is_loaded() and train._suggestion_logic is None


def _ijk_to_ras(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix
