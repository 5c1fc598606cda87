"""MiniSAMSegmentLogic with the small test model on the example CT: box -> liver -> segment."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from MiniSAMSegmentLib.logic import (
    MiniSAMSegmentLogic,
    ras_to_slice_prompt,
    segment_array,
    volume_arrays,
)
from slicer_cases import LIVER_BOX, LIVER_SLICE

from minisam.checkpoints import LoadedModel
from minisam.metrics import dice
from minisam.prompts import Prompt
from minisam.propagation import PropagationSettings


def _liver_box_prompt(volume):
    """The liver box given as two world-RAS corners, the way a drag on the Red slice view reports it."""
    ijk_to_ras = volume_arrays(volume).ijk_to_ras
    i0, j0, i1, j1 = LIVER_BOX
    corners = [(ijk_to_ras @ [i, j, LIVER_SLICE, 1.0])[:3] for i, j in ((i0, j0), (i1, j1))]
    return ras_to_slice_prompt(volume, [0.0, 0.0, 1.0], box=corners)


def test_liver_box_on_slice_24_is_written_into_the_segment(
    context, ct_volume, liver_labels, segment_logic
) -> None:
    segmentation = context.new_segmentation(ct_volume)
    other = np.zeros(liver_labels.shape, np.uint8)
    other[20:28, 60:90, 30:60] = 1  # overlaps the liver on purpose
    other_id = segment_logic.write_mask_to_segment(
        segmentation, "", ct_volume, other, mode="replace"
    )
    liver_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")

    slice_prompt = _liver_box_prompt(ct_volume)
    assert (slice_prompt.axis, slice_prompt.index) == (0, LIVER_SLICE)
    mask, score = segment_logic.predict_on_slice(
        ct_volume, slice_prompt.axis, slice_prompt.index, slice_prompt.prompt
    )
    assert mask.shape == liver_labels.shape[1:] and 0.0 < score <= 1.5
    segment_logic.write_mask_to_segment(
        segmentation, liver_id, ct_volume, mask, axis=slice_prompt.axis, index=slice_prompt.index
    )
    written = segment_array(segmentation, liver_id, ct_volume)
    assert written.sum() == written[LIVER_SLICE].sum() == mask.sum()
    assert dice(written[LIVER_SLICE], liver_labels[LIVER_SLICE]) > 0.7
    np.testing.assert_array_equal(segment_array(segmentation, other_id, ct_volume), other)


def test_propagation_fills_neighbouring_slices(
    context, ct_volume, liver_labels, segment_logic
) -> None:
    slice_prompt = _liver_box_prompt(ct_volume)
    seen = []
    result = segment_logic.propagate(
        ct_volume,
        slice_prompt.axis,
        {slice_prompt.index: slice_prompt.prompt},
        PropagationSettings(),
        progress=lambda done, total: seen.append((done, total)) is None,
    )
    assert len(result.slices) >= 10 and not result.cancelled
    assert seen and all(total == 30 for _, total in seen)
    segmentation = context.new_segmentation(ct_volume)
    seg_id = segment_logic.write_mask_to_segment(
        segmentation, "", ct_volume, result.labels, axis=0, indices=sorted(result.slices)
    )
    written = segment_array(segmentation, seg_id, ct_volume)
    np.testing.assert_array_equal(written, result.labels)
    assert dice(written, liver_labels) > 0.6


def test_cancel_stops_propagation(ct_volume, segment_logic) -> None:
    slice_prompt = _liver_box_prompt(ct_volume)
    result = segment_logic.propagate(
        ct_volume, 0, {slice_prompt.index: slice_prompt.prompt}, progress=lambda done, total: False
    )
    assert result.cancelled and len(result.slices) == 2  # the prompted slice and one step


def test_sessions_are_cached_until_the_voxels_change(ct_volume) -> None:
    loads = []

    def loader(spec: str) -> LoadedModel:
        from minisam.model_loader import load_model

        loads.append(spec)
        return load_model(spec)

    logic = MiniSAMSegmentLogic("random:tiny", device="cpu", loader=loader)
    prompt = Prompt.create(positive=[[60, 50]])
    logic.predict_on_slice(ct_volume, 0, 3, prompt)
    logic.predict_on_slice(ct_volume, 0, 3, prompt)
    assert loads == ["random:tiny"] and logic.cache.hits == 1 and logic.cache.misses == 1
    first = logic.session(ct_volume)
    assert logic.session(ct_volume) is first
    slicer.util.arrayFromVolume(ct_volume)[3] += 1
    slicer.util.arrayFromVolumeModified(ct_volume)
    assert logic.session(ct_volume) is not first
    logic.modality = "mr"
    assert logic.session(ct_volume).key[2] == "mr"


def test_one_call_per_click_merges_prompts_and_reads_no_voxels_for_the_geometry(
    context, ct_volume, liver_labels, segment_logic, monkeypatch
) -> None:
    from MiniSAMSegmentLib import logic as logic_module
    from MiniSAMSegmentLib import volume_node as volume_module

    reads = []
    real = volume_module.volume_arrays
    for module in (logic_module, volume_module):
        monkeypatch.setattr(module, "volume_arrays", lambda node: reads.append(1) or real(node))
    segment_logic.release_data()
    segmentation = context.new_segmentation(ct_volume)
    liver_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    segment = {"segmentation_node": segmentation, "segment_id": liver_id}
    i0, j0, i1, j1 = LIVER_BOX
    box = [(i0, j0, LIVER_SLICE), (i1, j1, LIVER_SLICE)]
    edit = segment_logic.prompt_slice(ct_volume, [0.0, 0.0, 1.0], box_ijk=box, **segment)
    assert (edit.axis, edit.index) == (0, LIVER_SLICE)
    assert edit.mask.shape == liver_labels.shape[1:]
    assert dice(edit.mask, liver_labels[LIVER_SLICE]) > 0.7
    assert len(reads) == 2  # the voxels read once for the modality guess, once for the session
    click = segment_logic.prompt_slice(
        ct_volume,
        [0.0, 0.0, 1.0],
        positive_ijk=[((i0 + i1) / 2, (j0 + j1) / 2, LIVER_SLICE)],
        **segment,
    )
    assert click.prompt.box is not None and click.prompt.points is not None  # merged with the box
    assert len(reads) == 2  # a further click on the same volume reads no voxels
    segment_logic.release_data()


def test_prompts_per_segment_and_undo_takes_the_prompt_back(
    context, ct_volume, liver_editing
) -> None:
    """The effect's click flow through Slicer's real Segment Editor logic (its undo states included)."""
    logic, segmentation, liver_id, editor = liver_editing
    other_id = segmentation.GetSegmentation().AddEmptySegment("", "other")
    i0, j0, i1, j1 = LIVER_BOX
    centre = ((i0 + i1) / 2, (j0 + j1) / 2, LIVER_SLICE)

    def click(segment_id: str, apply: bool = True, **prompt):
        editor.node.SetSelectedSegmentID(segment_id)
        edit = logic.prompt_slice(
            ct_volume, "axial", segmentation_node=segmentation, segment_id=segment_id, **prompt
        )
        if apply:
            logic.apply_edit(editor, ct_volume, segmentation, segment_id, edit)
        return edit

    click(liver_id, box_ijk=[(i0, j0, LIVER_SLICE), (i1, j1, LIVER_SLICE)])
    refined = click(liver_id, positive_ijk=[centre])
    assert refined.prompt.box is not None and len(refined.prompt.points) == 1
    other = click(other_id, positive_ijk=[(20, 20, LIVER_SLICE)])
    assert (
        other.prompt.box is None and len(other.prompt.points) == 1
    )  # another segment starts clean
    written = segment_array(segmentation, liver_id, ct_volume)[LIVER_SLICE]
    np.testing.assert_array_equal(written, refined.mask)

    editor.logic.Undo()  # the click on 'other'
    editor.logic.Undo()  # the refining click on the liver
    assert logic.remembered_prompts(ct_volume, segmentation, other_id) == (None, {})
    again = click(liver_id, apply=False, negative_ijk=[(i0 + 2, j0 + 2, LIVER_SLICE)])
    assert again.prompt.box is not None
    assert again.prompt.labels.tolist() == [0]  # the undone positive click is gone

    segmentation.GetSegmentation().RemoveSegment(liver_id)  # prompts do not survive the segment
    assert not [owner for owner, _ in logic.book.pages if owner.segment_id == liver_id]
    click(other_id, apply=False, positive_ijk=[(20, 20, LIVER_SLICE)])
    context.scene.Clear(0)  # nor the scene
    assert logic.book.pages == {} and logic.held_volume_ids() == []
    logic.release()


def test_sessions_are_released_with_their_nodes_and_the_scene(context, ct_volume) -> None:
    logic = MiniSAMSegmentLogic("random:tiny", device="cpu")
    logic.observe_scene(context.scene)
    path = ct_volume.GetStorageNode().GetFileName()
    second = context.load_volume(path, "second")
    prompt = Prompt.create(positive=[[60, 50]])
    for volume in (ct_volume, second):
        logic.predict_on_slice(volume, 0, 3, prompt)
    assert logic.held_volume_ids() == sorted([ct_volume.GetID(), second.GetID()])
    sessions = [logic.session(volume) for volume in (ct_volume, second)]
    assert len(logic.cache) >= 2  # slice 3 of each (and neighbours embedded in the background)

    context.scene.RemoveNode(ct_volume)
    assert logic.held_volume_ids() == [second.GetID()]
    assert sessions[0].precompute.closed and not sessions[1].precompute.closed
    context.scene.Clear(0)
    assert logic.held_volume_ids() == [] and len(logic.cache) == 0 and logic.model_is_loaded()
    assert sessions[1].precompute.closed  # its worker stopped: nothing more goes into the cache

    third = context.load_volume(path, "third")
    logic.predict_on_slice(third, 0, 3, prompt)
    logic.release()  # module cleanup: everything goes, the scene is no longer observed
    assert logic.held_volume_ids() == [] and not logic.model_is_loaded()
    logic.predict_on_slice(third, 0, 3, prompt)
    context.scene.RemoveNode(third)
    assert logic.held_volume_ids() == [third.GetID()]


def test_a_single_click_offers_three_candidates_cycled_as_undoable_edits(
    ct_volume, liver_editing
) -> None:
    """A lone click's refined mask and SAM's three, switched in place; Undo walks back candidate, then
    prompt."""
    from minisam.errors import PromptError

    logic, segmentation, liver_id, editor = liver_editing
    # the walk below undoes six states: the logic keeps five unless told; Slicer's Segment Editor
    # widgets are set to ten (setMaximumNumberOfUndoStates(10))
    editor.logic.SetMaximumNumberOfUndoStates(10)
    i0, j0, i1, j1 = LIVER_BOX
    where = {"segmentation_node": segmentation, "segment_id": liver_id}
    edit = logic.prompt_slice(
        ct_volume, "axial", positive_ijk=[((i0 + i1) / 2, (j0 + j1) / 2, LIVER_SLICE)], **where
    )
    # the click answered again with its best candidate's box, then SAM's three, best-rated first
    assert len(edit.candidates) == 4 and edit.choice == 0
    assert list(edit.scores[1:]) == sorted(edit.scores[1:], reverse=True)
    logic.apply_edit(editor, ct_volume, segmentation, liver_id, edit)

    def written():
        return segment_array(segmentation, liver_id, ct_volume)[LIVER_SLICE] != 0

    seen = [written()]
    current = edit
    for expected in (1, 2, 3, 0):
        current = logic.apply_next_candidate(editor, ct_volume, segmentation, liver_id, current)
        assert current.choice == expected
        np.testing.assert_array_equal(written(), current.candidates[expected])
        seen.append(written())
    assert len({mask.tobytes() for mask in seen[:4]}) >= 2  # the candidates differ
    np.testing.assert_array_equal(seen[4], seen[0])  # back to the first one

    editor.logic.Undo()  # the last switch: candidate 3 again, the click is still remembered
    np.testing.assert_array_equal(written(), edit.candidates[3])
    axis, prompts = logic.remembered_prompts(ct_volume, segmentation, liver_id)
    assert list(prompts) == [LIVER_SLICE]
    for _ in range(4):  # the other switches, then the click's own edit
        editor.logic.Undo()
    assert not written().any()
    assert logic.remembered_prompts(ct_volume, segmentation, liver_id) == (None, {})
    with pytest.raises(PromptError, match="undone or followed by another"):
        logic.apply_next_candidate(editor, ct_volume, segmentation, liver_id, current)

    box = logic.prompt_slice(
        ct_volume, "axial", box_ijk=[(i0, j0, LIVER_SLICE), (i1, j1, LIVER_SLICE)], **where
    )
    assert len(box.candidates) == 1 and box.next_candidate() is box
    with pytest.raises(PromptError, match="only a single click gets SAM's candidate masks"):
        logic.apply_next_candidate(editor, ct_volume, segmentation, liver_id, box)
