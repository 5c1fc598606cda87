"""The browser app's session in-process: interactor events injected into offscreen trame-slicer slice views
reach the MiniSAM effect, land on the right voxels and edit the selected segment through the shared logic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from model_files import SMALL_MODEL
from web_cases import (
    AXIAL_SLICE,
    KIDNEY_LEFT,
    LIVER,
    ijk_to_ras,
    label_box,
    label_center,
    ras_to_xy,
)

SIZE = (400, 400)


class Views:
    """A SlicerApp with three offscreen slice views and the app's session on it."""

    def __init__(self) -> None:
        from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic
        from MiniSAMWebLib.controller import WebSegmentation
        from trame_slicer.core import SlicerApp
        from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

        self.app = SlicerApp()
        self.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        self.views = {}
        for definition in (
            ViewLayoutDefinition.axial_view(),
            ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view(),
        ):
            view = self.app.view_manager.create_view(definition)
            view.render_window().SetSize(*SIZE)
            self.views[view.get_view_node().GetOrientation()] = view
        logic = MiniSAMSegmentLogic(model_spec=SMALL_MODEL, adapter="none", runtime="torch")
        self.published = []
        self.session = WebSegmentation(self.app, logic, self.published.append)

    def load(self, path: Path):
        node = self.session.load_volume(path)
        for view in self.views.values():
            view.render()  # sizes the slice node to the window
        return node

    def show(self, orientation: str, ijk) -> tuple:
        """Put the voxel on the view's slice; returns the view and the voxel's RAS."""
        view = self.views[orientation]
        ras = ijk_to_ras(self._ijk_to_ras(), ijk)
        view.get_view_node().JumpSliceByOffsetting(*ras)
        view.render()
        return view, ras

    def _ijk_to_ras(self) -> np.ndarray:
        import vtk

        matrix = vtk.vtkMatrix4x4()
        self.session.volume_node.GetIJKToRASMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def click(self, orientation: str, ijk, **gesture) -> None:
        """Click (or press and release, see :func:`press_release`) on voxel ``ijk``; wait for the edit."""
        view, ras = self.show(orientation, ijk)

        async def click() -> None:
            press_release(view, self.xy(view, ras), **gesture)
            await self.session.idle()

        asyncio.run(click())

    def xy(self, view, ras) -> tuple[int, int]:
        matrix = view.get_view_node().GetXYToRAS()
        rows = [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
        x, y = ras_to_xy(rows, ras)
        return round(x), round(y)


def press_release(view, start, end=None, button="Left", shift=False) -> None:
    """Inject the mouse arriving at ``start``, a press there and a release at ``end`` (a drag through the
    midpoint between), as a browser sends them."""
    from vtkmodules.vtkCommonCore import vtkCommand

    interactor = view.interactor()
    end = end or start
    interactor.SetEventInformation(int(start[0]), int(start[1]), 0, int(shift))
    interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
    interactor.InvokeEvent(getattr(vtkCommand, f"{button}ButtonPressEvent"))
    if end != start:
        middle = ((start[0] + end[0]) // 2, (start[1] + end[1]) // 2)
        for x, y in (middle, end):
            interactor.SetEventInformation(int(x), int(y), 0, int(shift))
            interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
    interactor.SetEventInformation(int(end[0]), int(end[1]), 0, int(shift))
    interactor.InvokeEvent(getattr(vtkCommand, f"{button}ButtonReleaseEvent"))


@pytest.fixture(scope="module")
def views() -> Views:
    return Views()


@pytest.fixture()
def loaded(views: Views, ct_path: Path) -> Views:
    views.load(ct_path)
    return views


@pytest.fixture(autouse=True)
def nothing_left_open(views: Views):
    """Each test closes what it opened (the app's Close volume), so none pays for another's volumes."""
    yield
    session = views.session
    session.report.busy = ""
    shown = session.report.volume_id
    for volume_id in sorted(session.open_volumes, key=lambda v: v == shown):  # the shown one last
        run(session.close_volume(volume_id))


def run(coroutine):
    return asyncio.run(coroutine)


def test_click_lands_on_its_voxel_and_writes_that_slice(loaded: Views, reference_labels) -> None:
    target = label_center(reference_labels, LIVER, AXIAL_SLICE)
    _, ras = loaded.show("Axial", target)
    loaded.click("Axial", target)
    report = loaded.session.report
    assert report.error == ""
    prompt = report.prompt
    assert prompt["kind"] == "positive"
    assert prompt["axis"] == 0 and prompt["slice"] == AXIAL_SLICE
    # the server saw the click on the voxel aimed at (within the rounding of the display position)
    assert np.allclose(prompt["ijk"][0], target, atol=0.6)
    assert np.allclose(prompt["ras"][0], ras, atol=2.0)
    labels = loaded.session.segment_labels()
    assert labels.sum() == prompt["voxels"] > 0
    assert set(np.nonzero(labels)[0]) == {AXIAL_SLICE}  # only the clicked slice
    assert report.can_undo and "predicted IoU" in report.status
    assert (
        f"({loaded.session.logic.describe()})" in report.status
    )  # what ran: the model (+ adapter)


def test_drag_is_a_box_and_undo_redo_walk_the_edits(loaded: Views, reference_labels) -> None:
    i0, j0, i1, j1 = label_box(reference_labels, KIDNEY_LEFT, AXIAL_SLICE)
    view, low = loaded.show("Axial", (i0, j0, AXIAL_SLICE))
    _, high = loaded.show("Axial", (i1, j1, AXIAL_SLICE))
    session = loaded.session

    async def drag():
        press_release(view, loaded.xy(view, low), loaded.xy(view, high))
        await session.idle()

    run(drag())
    prompt = session.report.prompt
    assert prompt["kind"] == "box" and prompt["slice"] == AXIAL_SLICE
    corners = np.array(prompt["ijk"])[:, :2]
    assert np.allclose(corners.min(axis=0), [i0, j0], atol=0.6)
    assert np.allclose(corners.max(axis=0), [i1, j1], atol=0.6)
    boxed = session.segment_labels()
    assert boxed.sum() > 0
    assert session.report.can_undo

    session.undo()
    assert session.segment_labels().sum() == 0
    assert session.report.can_redo
    session.redo()
    assert np.array_equal(session.segment_labels(), boxed)


def test_shift_click_and_right_click_are_negative_points(loaded: Views, reference_labels) -> None:
    target = label_center(reference_labels, LIVER, AXIAL_SLICE)
    view, ras = loaded.show("Axial", target)
    session = loaded.session
    kinds = []

    async def clicks():
        xy = loaded.xy(view, ras)
        press_release(view, xy)
        await session.idle()
        kinds.append(session.report.prompt["kind"])
        press_release(view, (xy[0] + 15, xy[1]), shift=True)
        await session.idle()
        kinds.append(session.report.prompt["kind"])
        press_release(view, (xy[0] - 15, xy[1]), button="Right")
        await session.idle()
        kinds.append(session.report.prompt["kind"])

    run(clicks())
    assert kinds == ["positive", "negative", "negative"]
    owner_prompts = session.logic.remembered_prompts(
        session.volume_node, session.segmentation_node, session.editor.active_segment_id
    )[1]
    assert owner_prompts[AXIAL_SLICE].labels.tolist() == [1, 0, 0]  # one slice, merged as in Slicer


@pytest.mark.parametrize(("orientation", "axis"), [("Coronal", 1), ("Sagittal", 2)])
def test_coronal_and_sagittal_views_prompt_along_their_own_axis(
    loaded: Views, reference_labels, orientation: str, axis: int
) -> None:
    target = label_center(reference_labels, LIVER, AXIAL_SLICE)
    loaded.click(orientation, target)
    report = loaded.session.report
    assert report.error == "" and report.segment_voxels == report.prompt["voxels"] > 0
    prompt = report.prompt
    # numpy axis 1 = j (coronal), 2 = i (sagittal)
    assert prompt["axis"] == axis and prompt["slice"] == round(target[2 - axis])
    assert np.allclose(prompt["ijk"][0], target, atol=0.6)


def test_propagate_fills_neighbours_and_cancel_keeps_what_was_done(
    loaded: Views, reference_labels
) -> None:
    session = loaded.session
    loaded.click("Axial", label_center(reference_labels, LIVER, AXIAL_SLICE))
    run(session.propagate())
    assert session.report.error == ""
    filled = session.segment_labels()
    assert len(set(np.nonzero(filled)[0])) > 1
    assert "Propagation filled" in session.report.status
    assert session.report.progress[1] > 0
    session.undo()  # one undo step for the whole propagation
    assert set(np.nonzero(session.segment_labels())[0]) == {AXIAL_SLICE}

    loaded.published.clear()
    original = session._publish

    def cancel_on_first_progress(report) -> None:
        original(report)
        if report.busy == "propagating" and report.progress[0] >= 1:
            session.cancel()

    session._publish = cancel_on_first_progress
    try:
        run(session.propagate())
    finally:
        session._publish = original
    assert "(cancelled)" in session.report.status
    assert len(set(np.nonzero(session.segment_labels())[0])) >= 1


def test_a_gesture_while_busy_is_refused_with_one_line(loaded: Views, reference_labels) -> None:
    target = label_center(reference_labels, LIVER, AXIAL_SLICE)
    view, ras = loaded.show("Axial", target)
    session = loaded.session

    async def two_clicks():
        press_release(view, loaded.xy(view, ras))
        press_release(view, loaded.xy(view, ras))  # the first one is still running
        await session.idle()

    run(two_clicks())
    assert session.segment_labels().sum() > 0  # the first click was written
    refusals = [r for r in loaded.published if "busy" in r.error]
    assert refusals or "busy" in session.report.error


def test_save_seg_nrrd_and_label_map_reload_equal(
    loaded: Views, reference_labels, tmp_path
) -> None:
    import SimpleITK as sitk

    session = loaded.session
    session.output_dir = tmp_path
    loaded.click("Axial", label_center(reference_labels, LIVER, AXIAL_SLICE))
    labels = session.segment_labels()
    seg = session.save("liver.seg.nrrd")
    nifti = session.save(tmp_path / "liver.nii.gz")
    assert seg == tmp_path / "liver.seg.nrrd" and session.report.saved == str(nifti)
    reloaded = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    assert np.array_equal(reloaded != 0, labels != 0)
    import slicer
    from MiniSAMSegmentLib.mrml_context import mrml_context
    from MiniSAMSegmentLib.segment_io import segment_array

    context = mrml_context()  # a fresh scene: the saved file alone must give the segment back
    volume = context.load_volume(session.volume_node.GetStorageNode().GetFileName())
    reader = slicer.vtkSlicerSegmentationsModuleLogic()
    reader.SetMRMLScene(context.scene)
    node = reader.LoadSegmentationFromFile(str(seg), False)
    assert node is not None
    segment_id = node.GetSegmentation().GetNthSegmentID(0)
    assert np.array_equal(segment_array(node, segment_id, volume), labels)


def test_bad_save_name_is_one_line(loaded: Views, tmp_path) -> None:
    from minisam.errors import OutputError

    with pytest.raises(OutputError, match="save as"):
        loaded.session.save(tmp_path / "mask.png")
    with pytest.raises(OutputError, match="does not exist"):
        loaded.session.save(tmp_path / "missing" / "mask.seg.nrrd")


def press_key(view, key: str) -> None:
    from vtkmodules.vtkCommonCore import vtkCommand

    interactor = view.interactor()
    interactor.SetKeySym(key)
    interactor.SetKeyCode(key)
    interactor.InvokeEvent(vtkCommand.KeyPressEvent)


def test_key_c_cycles_the_single_clicks_candidates_as_undo_steps(
    loaded: Views, reference_labels
) -> None:
    session = loaded.session
    loaded.click("Axial", label_center(reference_labels, LIVER, AXIAL_SLICE))
    first = session.segment_labels()
    assert "mask 1 of 4" in session.report.status  # refined, then SAM's three

    async def key_c():
        press_key(loaded.views["Axial"], "c")
        await session.idle()

    run(key_c())
    assert session.report.error == "" and "mask 2 of 4" in session.report.status
    second = session.segment_labels()
    assert set(np.nonzero(second)[0]) <= {AXIAL_SLICE}
    assert session.report.prompt["voxels"] == second.sum()
    session.undo()  # back to the first candidate, the click still remembered
    assert np.array_equal(session.segment_labels(), first)
    assert not np.array_equal(first, second)  # SAM's unrefined best differs from the refined mask


def test_choices_change_what_segments_and_a_bad_one_keeps_the_previous(loaded: Views) -> None:
    session = loaded.session
    run(session.choose(modality="ct-abdomen", adapter="none"))
    assert session.report.error == ""
    assert (session.report.modality, session.report.adapter) == ("ct-abdomen", "none")
    run(session.choose(modality="no-such-preset"))
    assert "no-such-preset" in session.report.error and "\n" not in session.report.error
    assert session.logic.modality == session.report.modality == "ct-abdomen"
    run(session.choose(adapter="no_such_adapter"))
    assert session.report.error and session.logic.adapter == "none"
    run(session.choose(runtime="tpu"))
    assert "tpu" in session.report.error and session.report.runtime == "torch"
    model = session.report.model
    run(session.choose(model="no_such_model"))
    assert "no_such_model" in session.report.error and "\n" not in session.report.error
    assert session.logic.model_spec == session.report.model == model
    run(session.choose(modality="auto"))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_mha_volumes_open_and_segment(
    views: Views, ct_path: Path, reference_labels, tmp_path, suffix: str
) -> None:
    import SimpleITK as sitk

    path = tmp_path / f"ct-{suffix[1:]}{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(ct_path)), str(path))
    node = views.load(path)
    assert views.session.report.volume == node.GetName() == f"ct-{suffix[1:]}"
    views.click("Axial", label_center(reference_labels, LIVER, AXIAL_SLICE))
    report = views.session.report
    assert report.error == "" and report.prompt["slice"] == AXIAL_SLICE
    assert report.segment_voxels == report.prompt["voxels"] > 0


def test_a_dicom_series_opens_beside_the_ct_and_each_keeps_its_segments(
    loaded: Views, reference_labels, shared_data: Path
) -> None:
    session = loaded.session
    loaded.click("Axial", label_center(reference_labels, LIVER, AXIAL_SLICE))
    ct = session.volume_node
    ct_labels = session.segment_labels()
    node = loaded.load(shared_data / "totalsegmentator_example" / "example_ct_dicom")
    assert node.GetAttribute("DICOM.Modality") == "CT"
    assert session.report.volume_id == node.GetID() and session.report.segment_voxels == 0
    dims = node.GetImageData().GetDimensions()
    loaded.click("Axial", ((dims[0] - 1) / 2, (dims[1] - 1) / 2, (dims[2] - 1) // 2))
    assert session.report.error == "" and session.report.prompt["axis"] == 0
    assert session.report.segment_voxels == session.report.prompt["voxels"] > 0
    opened = [v["id"] for v in session.report.volumes]
    assert opened[-2:] == [ct.GetID(), node.GetID()]

    session.show_volume(ct.GetID())  # back to the CT: its segment and its prompt markups
    assert session.report.volume == ct.GetName() and session.report.volume_id == ct.GetID()
    assert np.array_equal(session.segment_labels(), ct_labels)
    from MiniSAMSegmentLib.prompt_markups import OWNER_ATTRIBUTE

    points = loaded.app.scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    owners = {
        points.GetItemAsObject(i).GetAttribute(OWNER_ATTRIBUTE)
        for i in range(points.GetNumberOfItems())
    }
    assert len(owners) == 1 and next(iter(owners)).startswith(ct.GetID() + "|")


def test_prompts_show_as_markups_and_dragging_one_segments_again(
    loaded: Views, reference_labels
) -> None:
    session = loaded.session
    target = label_center(reference_labels, LIVER, AXIAL_SLICE)
    loaded.click("Axial", target)
    scene = loaded.app.scene
    points = scene.GetFirstNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert points is not None and points.GetNumberOfControlPoints() == 1
    before = session.segment_labels()
    view, ras = loaded.show("Axial", target)
    start = loaded.xy(view, ras)
    actions = session.report.actions

    async def drag_the_point():
        view.render()
        press_release(view, start, (start[0] + 12, start[1] + 6))
        await session.idle()

    run(drag_the_point())
    assert session.report.actions == actions + 1 and session.report.error == ""
    moved = np.array(points.GetNthControlPointPosition(0))
    assert np.linalg.norm(moved - ras) > 5  # the point went with the mouse: it is not a box
    assert session.report.prompt["kind"] == "positive"
    after = session.segment_labels()
    assert set(np.nonzero(after)[0]) <= {AXIAL_SLICE} and not np.array_equal(after, before)
    session.undo()  # the re-segmentation is one undo step
    assert np.array_equal(session.segment_labels(), before)


def test_a_box_drag_shows_its_rectangle_until_release(loaded: Views) -> None:
    from vtkmodules.vtkCommonCore import vtkCommand

    view = loaded.views["Axial"]
    view.render()
    pipelines = [ref() for ref in loaded.session.effect.pipelines if ref() is not None]
    shown = [p for p in pipelines if p.GetViewNode() is view.get_view_node()]
    assert len(shown) == 1
    rectangle = shown[0]._rectangle.actor
    interactor = view.interactor()

    async def drag() -> list[int]:
        seen = []
        interactor.SetEventInformation(120, 120, 0, 0)
        interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
        interactor.InvokeEvent(vtkCommand.LeftButtonPressEvent)
        seen.append(rectangle.GetVisibility())
        interactor.SetEventInformation(200, 180, 0, 0)
        interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
        seen.append(rectangle.GetVisibility())
        interactor.InvokeEvent(vtkCommand.LeftButtonReleaseEvent)
        seen.append(rectangle.GetVisibility())
        await loaded.session.idle()
        return seen

    assert run(drag()) == [0, 1, 0]
    assert loaded.session.report.prompt["kind"] == "box"


def owners(session) -> tuple[set, set]:
    """(prompt book owners, owners of prompt markups in the scene) of the session's logic."""
    from MiniSAMSegmentLib.prompt_markups import owners_in_scene

    book = {owner for owner, _ in session.logic.book.pages}
    return book, {owner for owner, _ in owners_in_scene(session.app.scene)}


def test_delete_segment_forgets_its_prompts_and_undo_brings_back_its_voxels(
    loaded: Views, reference_labels
) -> None:
    session = loaded.session
    loaded.click("Axial", label_center(reference_labels, LIVER, AXIAL_SLICE))
    liver = session.report.segment_id
    session.add_segment()
    kidney = session.report.segment_id
    loaded.click("Axial", label_center(reference_labels, KIDNEY_LEFT, AXIAL_SLICE))
    kidney_labels = session.segment_labels()
    assert kidney_labels.sum() > 0
    assert {o.segment_id for o in owners(session)[0]} >= {liver, kidney}

    session.report.busy = "propagating"  # as while a propagation runs: refused, nothing deleted
    run(session.delete_segment())
    session.report.busy = ""
    assert "busy" in session.report.error and kidney in session.editor.get_segment_ids()

    run(session.delete_segment())
    report = session.report
    assert report.error == "" and report.status.startswith("Deleted")
    assert [s["id"] for s in report.segments] == [liver] and report.segment_id == liver
    book, markups = owners(session)
    assert kidney not in {o.segment_id for o in book | markups}  # released: prompts, markups
    assert liver in {o.segment_id for o in book} and liver in {o.segment_id for o in markups}

    session.undo()  # one undo step: the segment and its voxels come back, not its prompts
    assert kidney in session.editor.get_segment_ids()
    assert np.array_equal(session.segment_labels(kidney), kidney_labels)
    assert kidney not in {o.segment_id for o in owners(session)[0]}


def test_close_volume_releases_its_session_embeddings_and_prompts(
    loaded: Views, reference_labels, ct_path: Path
) -> None:
    session, scene, logic = loaded.session, loaded.app.scene, loaded.session.logic
    liver = label_center(reference_labels, LIVER, AXIAL_SLICE)
    loaded.click("Axial", liver)
    first = session.volume_node.GetID()
    loaded.load(ct_path)
    loaded.click("Axial", liver)
    volume, segmentation = session.volume_node, session.segmentation_node
    volume_id, segmentation_id = volume.GetID(), segmentation.GetID()
    assert set(logic.held_volume_ids()) == {first, volume_id}
    assert any(key[0][0] == volume_id for key in logic.cache.keys())

    run(session.close_volume())  # the one shown: the other open volume is shown
    report = session.report
    assert report.error == "" and report.status == f"Closed {volume.GetName()}."
    assert list(session.open_volumes) == [first] and report.volume_id == first
    assert scene.GetNodeByID(volume_id) is None and scene.GetNodeByID(segmentation_id) is None
    assert logic.held_volume_ids() == [first]
    assert not any(key[0][0] == volume_id for key in logic.cache.keys())
    book, markups = owners(session)
    assert volume_id not in {o.volume_id for o in book | markups}
    assert {o.volume_id for o in book} == {first}  # the other volume's prompts are kept

    third = loaded.load(ct_path).GetID()
    run(session.close_volume(first))  # one not shown: the shown one stays
    assert session.report.error == "" and session.report.volume_id == third
    assert first not in logic.held_volume_ids() and owners(session)[0] == set()
    run(session.close_volume())  # the last one: nothing shown, nothing held
    assert session.report.error == "" and session.report.volume == ""
    assert session.report.status.endswith(". Load a volume.") and session.report.volumes == []
    assert session.report.segments == [] and not session.report.can_undo
    assert logic.held_volume_ids() == [] and owners(session) == (set(), set())
    for kind in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
        assert scene.GetNodesByClass(kind).GetNumberOfItems() == 0, kind
    run(session.close_volume())
    assert session.report.error == "no volume is open"


def test_a_saved_segmentation_opens_again_equal(loaded: Views, reference_labels, tmp_path) -> None:
    session = loaded.session
    session.output_dir = tmp_path
    loaded.click("Axial", label_center(reference_labels, LIVER, AXIAL_SLICE))
    session.add_segment()
    loaded.click("Axial", label_center(reference_labels, KIDNEY_LEFT, AXIAL_SLICE))
    before = {s["name"]: session.segment_labels(s["id"]) for s in session.report.segments}
    previous = session.segmentation_node.GetID()
    seg, nifti = session.save("both.seg.nrrd"), session.save("both.nii.gz")

    run(session.load_segmentation(seg))
    report = session.report
    assert report.error == "" and report.status == "Opened both.seg.nrrd: 2 segments."
    assert loaded.app.scene.GetNodeByID(previous) is None  # replaced, its prompts forgotten
    assert previous not in {o.segmentation_id for o in owners(session)[0]}
    after = {s["name"]: session.segment_labels(s["id"]) for s in report.segments}
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[name], before[name]) for name in before)

    run(session.load_segmentation(nifti))  # a label map: a segment per label value
    labels = sorted(s["voxels"] for s in session.report.segments)
    assert session.report.error == "" and labels == sorted(int(m.sum()) for m in before.values())
    run(session.load_segmentation(tmp_path / "mask.png"))
    assert "open a .seg.nrrd or a label map" in session.report.error
