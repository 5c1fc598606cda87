"""Prompts as markups: shown in the scene, moved by the user (re-segments the slice, undoable), found
again by a new logic (a scene saved to a file and loaded again keeps the markups and their owner attribute),
gone with their segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from MiniSAMSegmentLib import prompt_markups
from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic, segment_array
from MiniSAMSegmentLib.prompt_book import Owner
from slicer_cases import LIVER_BOX, LIVER_SLICE

I0, J0, I1, J1 = LIVER_BOX
CENTRE = ((I0 + I1) / 2, (J0 + J1) / 2)


def _ras(volume, i: float, j: float, k: float) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return (slicer.util.arrayFromVTKMatrix(matrix) @ [i, j, k, 1.0])[:3]


def _plain(prompts: dict) -> dict:
    return {
        index: (
            None if p.points is None else p.points.tolist(),
            None if p.labels is None else p.labels.tolist(),
            None if p.box is None else p.box.tolist(),
        )
        for index, p in prompts.items()
    }


def _saved_and_loaded(context, folder: Path):
    """The scene written to ``folder``/scene.mrml (markups and segmentations as files beside it, the volume
    where it was read from) and read into a new scene, as Slicer's Save and Load scene do."""
    from MiniSAMSegmentLib.mrml_context import mrml_context

    loaded = mrml_context()
    for context_ in (context, loaded):  # the markups' storage nodes (.mrk.json) need their logic
        logic = slicer.vtkSlicerMarkupsLogic()
        logic.SetMRMLScene(context_.scene)
        context_._keep.append(logic)
    scene = context.scene
    saved = [
        scene.GetNthNodeByClass(n, name)
        for name in ("vtkMRMLMarkupsNode", "vtkMRMLSegmentationNode")
        for n in range(scene.GetNumberOfNodesByClass(name))
    ]
    for node in saved:
        assert node.AddDefaultStorageNode()
        suffix = ".seg.nrrd" if node.IsA("vtkMRMLSegmentationNode") else ".mrk.json"
        node.GetStorageNode().SetFileName(str(folder / f"{node.GetID()}{suffix}"))
        assert node.GetStorageNode().WriteData(node)
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    loaded.scene.SetURL(str(folder / "scene.mrml"))
    assert loaded.scene.Import()
    return loaded


def test_prompts_are_markups_that_move_and_survive_in_the_scene(
    context, ct_volume, segment_logic, liver_editing, tmp_path: Path
) -> None:
    logic, segmentation, liver, editor = liver_editing
    where = {"segmentation_node": segmentation, "segment_id": liver}
    for prompt in (
        {"box_ijk": [(I0, J0, LIVER_SLICE), (I1, J1, LIVER_SLICE)]},
        {"positive_ijk": [(*CENTRE, LIVER_SLICE)]},
        {"negative_ijk": [(I0 + 3, J0 + 3, LIVER_SLICE)]},
    ):
        edit = logic.prompt_slice(ct_volume, "axial", **prompt, **where)
        logic.apply_edit(editor, ct_volume, segmentation, liver, edit)
    logic.show_prompts(ct_volume, segmentation, liver)

    owner = Owner(ct_volume.GetID(), segmentation.GetID(), liver)
    points, boxes = prompt_markups.nodes_of(context.scene, owner, 0)
    labels = [points.GetNthControlPointLabel(n) for n in range(points.GetNumberOfControlPoints())]
    assert labels == ["+", "-"] and list(boxes) == [LIVER_SLICE]
    assert points.GetName() == "MiniSAM prompts: liver"
    where_now = [0.0, 0.0, 0.0]
    points.GetNthControlPointPositionWorld(0, where_now)
    np.testing.assert_allclose(where_now, _ras(ct_volume, *CENTRE, LIVER_SLICE), atol=1e-6)
    remembered = logic.remembered_prompts(ct_volume, segmentation, liver)[1]
    assert _plain(prompt_markups.read(context.scene, ct_volume, owner, 0)) == _plain(remembered)

    # The user drags the positive point 12 voxels along i: the slice is segmented again from it.
    moved = (CENTRE[0] - 12, CENTRE[1])
    assert logic.moved_prompts(ct_volume, segmentation, liver, 0) == []
    points.SetNthControlPointPositionWorld(0, *_ras(ct_volume, *moved, LIVER_SLICE))
    assert logic.moved_prompts(ct_volume, segmentation, liver, 0) == [LIVER_SLICE]
    again = logic.reprompt_from_markups(editor, ct_volume, segmentation, liver, 0, LIVER_SLICE)
    assert again.prompt.points.tolist()[0] == [round(moved[0]), round(moved[1])]
    assert again.prompt.box is not None and again.prompt.labels.tolist() == [1, 0]
    written = segment_array(segmentation, liver, ct_volume)[LIVER_SLICE] != 0
    np.testing.assert_array_equal(written, again.mask)
    assert logic.moved_prompts(ct_volume, segmentation, liver, 0) == []
    after_move = logic.remembered_prompts(ct_volume, segmentation, liver)[1]
    assert after_move[LIVER_SLICE].points.tolist()[0] == [round(moved[0]), round(moved[1])]

    editor.logic.Undo()  # takes the move back: the book's point is where it was
    back = logic.remembered_prompts(ct_volume, segmentation, liver)[1]
    assert _plain(back) == _plain(remembered)
    logic.show_prompts(ct_volume, segmentation, liver)  # and so is the markup
    points.GetNthControlPointPositionWorld(0, where_now)
    np.testing.assert_allclose(where_now, _ras(ct_volume, *CENTRE, LIVER_SLICE), atol=1e-6)

    # A saved scene keeps markups with their attributes: a new logic finds the prompts there.
    assert points.GetAttribute(prompt_markups.OWNER_ATTRIBUTE).endswith(f"|{liver}|0")
    fresh = MiniSAMSegmentLogic("default", device="cpu", loader=lambda spec: segment_logic.model)
    fresh.observe_scene(context.scene)
    assert fresh.restore_prompts(context.scene) == 1
    assert _plain(fresh.remembered_prompts(ct_volume, segmentation, liver)[1]) == _plain(back)
    fresh.book.clear()
    context.scene.InvokeEvent(context.scene.EndImportEvent)  # what loading a scene file ends with
    assert _plain(fresh.remembered_prompts(ct_volume, segmentation, liver)[1]) == _plain(back)

    # Saved to a scene file and loaded into a new scene (a new Slicer session): the same prompts.
    loaded = _saved_and_loaded(context, tmp_path)
    nodes = [loaded.scene.GetNodeByID(node.GetID()) for node in (ct_volume, segmentation)]
    assert [node.GetName() for node in nodes] == [ct_volume.GetName(), segmentation.GetName()]
    reopened = MiniSAMSegmentLogic("default", device="cpu", loader=lambda spec: segment_logic.model)
    assert reopened.restore_prompts(loaded.scene) == 1
    assert _plain(reopened.remembered_prompts(*nodes, liver)[1]) == _plain(back)
    reopened.release()

    segmentation.GetSegmentation().RemoveSegment(liver)  # the prompts' markups go with the segment
    assert prompt_markups.nodes_of(context.scene, owner, 0) == (None, {})
    fresh.release()
