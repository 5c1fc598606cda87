"""Which slice to annotate next: the slices where the current model is least sure. MRML level, no Qt.

For every segment, each slice not annotated yet within (and ``margin`` slices around) the annotated run is
prompted with the box of the segment's nearest annotated slice, as propagation would, and SAM answers with its
three candidate masks. The model is sure where the best candidate's predicted IoU is high and the candidates
agree with each other; a slice's **confidence** is that predicted IoU times the candidates' mean pairwise
Dice, its lowest over the segments. The least confident slices come first: annotating them teaches the adapter
most (active learning by uncertainty sampling). The panel lists them; choosing one centres the slice views on
it (:func:`jump_to`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import slicer
import vtk

from minisam.errors import InputError

__all__ = ["SliceSuggestion", "jump_to", "score_slices", "suggest_slices"]

MARGIN = 5  # slices beyond the first and last annotated one that are considered too
LIMIT = 40  # at most this many slices are scored (evenly spread), so a suggestion takes seconds


@dataclass(frozen=True)
class SliceSuggestion:
    """A slice to annotate next and why."""

    index: int  # along the plan's slice axis
    confidence: float  # predicted IoU x candidates' agreement, 0..1 (lowest over the segments)
    predicted_iou: float
    agreement: float  # mean pairwise Dice of SAM's three candidate masks
    segment: str  # the segment this confidence is about
    ras: tuple[float, float, float]  # centre of the slice, for jumping there

    def describe(self, axis_name: str = "K") -> str:
        return (
            f"{axis_name} slice {self.index}: confidence {self.confidence:.2f} (predicted IoU "
            f"{self.predicted_iou:.2f}, candidates agree {self.agreement:.2f}; {self.segment})"
        )


def suggest_slices(
    segment_logic,
    volume_node,
    found,
    masks: dict[str, np.ndarray],
    count: int = 5,
    margin: int = MARGIN,
    limit: int = LIMIT,
    pump=None,
) -> list[SliceSuggestion]:
    """The ``count`` least confident unannotated slices, least confident first.

    Arguments:
      segment_logic: a ``MiniSAMSegmentLogic`` (its model, adapter choice, session of the volume and
        busy guard: a prompt in the effect meanwhile is refused).
      found, masks: what ``train_logic.read_annotations`` read (annotated slices and the segments'
        masks on the volume's grid).
      margin: slices considered beyond the first and last annotated slice of each segment.
      limit: at most this many slices per segment are scored, evenly spread over the candidates.
      pump: with it, the scoring (SAM on every candidate slice) runs on a worker thread while
        ``pump()`` runs in this one (see ``MiniSAMSegmentLib.busy.run_in_background``).

    Raises:
      InputError: nothing annotated, or ``count`` < 1. BusyError: the segment logic is busy.
    """
    from MiniSAMSegmentLib.busy import run_in_background

    if count < 1:
        raise InputError(f"count must be >= 1, not {count}")
    if not found.slices:
        raise InputError("draw the structure on a slice first: suggestions start from annotations")
    with segment_logic.guard("scoring slices for suggestions"):
        session = segment_logic.session(volume_node)  # MRML reads: in this thread
        scores = run_in_background(
            lambda: score_slices(session, found, masks, margin, limit), pump, name="MiniSAMTrain"
        )
    return [
        SliceSuggestion(index, c, iou, agree, name, _slice_centre(volume_node, found.axis, index))
        for index, (c, iou, agree, name) in scores[:count]
    ]


def score_slices(session, found, masks, margin: int = MARGIN, limit: int = LIMIT) -> list:
    """[(slice, (confidence, predicted IoU, agreement, segment name))], least confident first; reads
    no MRML (``session`` is a ``minisam.volume_session.VolumeSession``)."""
    from minisam.prompts import Prompt

    axis = found.axis
    total = session.slice_count(axis)
    annotated = set(found.slices)
    worst: dict[int, tuple[float, float, float, str]] = {}
    for segment_id, drawn in found.by_segment.items():
        if not drawn:
            continue
        low, high = max(0, min(drawn) - margin), min(total - 1, max(drawn) + margin)
        wanted = [i for i in range(low, high + 1) if i not in annotated]
        if len(wanted) > limit:
            wanted = [wanted[int(k)] for k in np.linspace(0, len(wanted) - 1, limit).round()]
        for index in wanted:
            nearest = min(drawn, key=lambda d: (abs(d - index), d))
            box = _box(np.take(masks[segment_id], nearest, axis=axis))
            prediction = session.predict(axis, index, Prompt.create(box=box), multimask=True)
            best = float(np.max(prediction.scores))
            agreement = _agreement(prediction.masks)
            confidence = float(np.clip(best, 0.0, 1.0) * agreement)
            name = found.names.get(segment_id, segment_id)
            if index not in worst or confidence < worst[index][0]:
                worst[index] = (confidence, best, agreement, name)
    return sorted(worst.items(), key=lambda item: (item[1][0], item[0]))


def jump_to(scene, suggestion: SliceSuggestion) -> None:
    """Centre every slice view of ``scene`` on the suggested slice."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(
        scene, *suggestion.ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice
    )


def _box(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])]


def _agreement(candidates: np.ndarray) -> float:
    """Mean pairwise Dice of the candidate masks (1: they all agree; 1 for a single mask)."""
    pairs = list(combinations(range(len(candidates)), 2))
    if not pairs:
        return 1.0
    values = []
    for a, b in pairs:
        total = candidates[a].sum() + candidates[b].sum()
        both = np.logical_and(candidates[a], candidates[b]).sum()
        values.append(1.0 if total == 0 else 2.0 * both / total)
    return float(np.mean(values))


def _slice_centre(volume_node, axis: int, index: int) -> tuple[float, float, float]:
    """World RAS of the centre of slice ``index`` along numpy ``axis`` of the (K, J, I) array."""
    dims = volume_node.GetImageData().GetDimensions()  # (I, J, K)
    ijk = [(n - 1) / 2.0 for n in dims]
    ijk[2 - axis] = float(index)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    point = matrix.MultiplyPoint([*ijk, 1.0])
    position = np.array(point[:3])
    transform = volume_node.GetParentTransformNode()
    if transform is not None:  # the volume's world position (a parent transform moves it)
        to_world = vtk.vtkGeneralTransform()
        transform.GetTransformToWorld(to_world)
        position = np.array(to_world.TransformPoint(*position))
    return tuple(float(v) for v in position)
