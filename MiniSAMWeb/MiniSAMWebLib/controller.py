"""The browser app's segmentation session: volume, segments, MiniSAM prompts, propagation, undo, save.

No trame here (the app binds it to the UI state), so tests drive it in-process. Every MRML-level step is
``MiniSAMSegmentLogic``'s, as in the Slicer effect; what this adds is the asynchronous part: the model's slow
work (loading, a slice's encoder, propagation) runs on a one-thread executor while the server's event loop
keeps serving frames, and one action at a time (a gesture while one runs gets a one-line refusal).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np
import vtk
from MiniSAMSegmentLib import prompt_markups
from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic, SliceEdit
from MiniSAMSegmentLib.mrml_context import MRMLContext
from MiniSAMSegmentLib.segment_io import segment_array, write_segmentation
from MiniSAMSegmentLib.slice_geometry import ijk_to_slice_prompt, ras_to_ijk, slice_axis
from MiniSAMSegmentLib.view_gestures import Gesture
from trame_slicer.core import SlicerApp
from undo_stack import UndoStack

from minisam.errors import InputError, MiniSAMError, OutputError, PromptError
from minisam.propagation import PropagationSettings

from .editor_bridge import TrameSegmentEditor
from .effect import MiniSAMEffect
from .report import PromptReport, SessionReport

__all__ = ["WebSegmentation"]

T = TypeVar("T")
LOG = logging.getLogger("minisam.web")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


class WebSegmentation:
    """One browser session's scene: a volume, its segmentation and MiniSAM on it.

    Arguments:
      slicer_app: trame-slicer's application (scene, logics, views, segmentation editor).
      logic: the shared MiniSAMSegment logic (model, adapter, modality, embedding cache, prompt book).
      publish: called with the report after every change (the app copies it into the UI state).
      output_dir: where :meth:`save` writes relative paths.
    """

    def __init__(
        self,
        slicer_app: SlicerApp,
        logic: MiniSAMSegmentLogic,
        publish: Callable[[SessionReport], None] | None = None,
        output_dir: str | os.PathLike[str] = ".",
    ) -> None:
        self.app = slicer_app
        self.logic = logic
        self.output_dir = Path(output_dir)
        self.report = SessionReport()
        self._show_choice()
        self._publish = publish or (lambda report: None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minisam-model")
        self._tasks: set[asyncio.Task] = set()
        self._cancel = False
        self.volume_node = None
        self.segmentation_node = None
        self.undo_stack = UndoStack(undo_limit=50)
        self.editor = slicer_app.segmentation_editor
        self.editor.set_undo_stack(self.undo_stack)
        self.undo_stack.index_changed.connect(lambda *_: self._changed())
        self.effect = self.editor.get_effect(MiniSAMEffect)
        self.effect.set_prompt_handler(self.on_gesture)
        self.effect.set_shortcut_handler(self.on_shortcut)
        self._last_edit: SliceEdit | None = None  # the latest prompt's edit (its other candidates)
        self._markup_observations: list[tuple[object, int]] = []
        # volume node ID -> (volume node, its segmentation node), in the order they were opened
        self.open_volumes: dict[str, tuple[object, object]] = {}
        # No logic.observe_scene here: trame-slicer's undo restores a segmentation by DeepCopy, which
        # removes and re-adds its segments, and the logic would take that for a deleted segment and
        # forget its prompts. Deleting a segment, closing a volume and replacing a segmentation call the
        # logic's forget_segment / forget_node themselves (what its scene observers call in Slicer).

    # -- volume and segments ---------------------------------------------------------------------------

    def load_volume(self, path: str | os.PathLike[str], name: str | None = None):
        """Read a volume file or DICOM folder (as ``minisam segment`` reads it) with an empty
        segmentation of one segment, and show it (:meth:`show_volume`)."""
        context = MRMLContext(scene=self.app.scene, volumes_logic=self.app.volumes_logic)
        node = context.load_volume(path, name)
        segmentation = self.editor.create_empty_segmentation_node()
        segmentation.SetName(f"{node.GetName()} MiniSAM")
        self.open_volumes[node.GetID()] = (node, segmentation)
        self.show_volume(node.GetID())
        self.add_segment()
        self.undo_stack.clear()  # adding the first segment is not an edit to undo
        self._finish(f"Loaded {node.GetName()}: click on a structure or drag a box.")
        return node

    def show_volume(self, volume_id: str) -> None:
        """Edit another open volume: the slice views show it, its segmentation and segments are the
        editor's (undo starts afresh; each volume keeps its prompts, shown while it is)."""
        if volume_id not in self.open_volumes:
            raise InputError(f"volume {volume_id!r} is not open")
        node, segmentation = self.open_volumes[volume_id]
        prompt_markups.remove(self.app.scene)  # the markups of the volume shown until now
        self._last_edit = None
        self.volume_node, self.segmentation_node = node, segmentation
        self.app.display_manager.show_volume_in_slice_background(node)
        self.app.display_manager.show_volume_in_slice_foreground(None)
        self.app.display_manager.reset_views()
        self.editor.set_active_segmentation(segmentation, node)
        self.report.volume = node.GetName()
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        self.report.ijk_to_ras = [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
        self.report.prompt = None
        if self.editor.n_segments:
            self.select_segment(self.editor.get_nth_segment_id(0))
        self.report.status = f"Showing {node.GetName()}."
        self._show_prompts()
        self._changed()

    async def close_volume(self, volume_id: str | None = None) -> None:
        """Close an open volume (default: the one shown): its nodes leave the scene and the logic
        releases its session (normalised copy, background worker, cached embeddings) and prompts; another
        open volume is shown, or none."""
        await self._action("closing a volume", self._close_volume(volume_id))

    async def _close_volume(self, volume_id: str | None) -> None:
        shown = self.volume_node.GetID() if self.volume_node is not None else ""
        volume_id = volume_id or shown
        if volume_id not in self.open_volumes:
            raise InputError(
                f"volume {volume_id!r} is not open" if volume_id else "no volume is open"
            )
        node, segmentation = self.open_volumes.pop(volume_id)
        if volume_id == shown:
            if self.open_volumes:
                self.show_volume(list(self.open_volumes)[-1])
            else:
                self._show_no_volume()
        self._release(segmentation, node)
        self.report.status = f"Closed {node.GetName()}." + (
            "" if self.open_volumes else " Load a volume."
        )

    def _show_no_volume(self) -> None:
        self._unwatch_markups()
        self._last_edit = None
        self.volume_node = self.segmentation_node = None
        self.editor.clear()  # no segmentation to edit; its undo steps are gone
        self.app.display_manager.show_volume_in_slice_background(None)
        self.report.volume, self.report.ijk_to_ras, self.report.prompt = "", [], None

    def _release(self, *nodes) -> None:
        """Remove nodes from the scene, the logic first releasing what it holds for them."""
        for node in nodes:
            self.logic.forget_node(node, self.app.scene)
            self.app.scene.RemoveNode(node)

    async def load_segmentation(self, path: str | os.PathLike[str]) -> None:
        """Open a segmentation for the volume shown, in place of its segmentation (whose prompts are
        forgotten): a ``.seg.nrrd`` or a label map (``.nii.gz``, ``.nii``, ``.nrrd``; a segment per
        label value), read by Slicer's segmentation storage node (undo starts afresh)."""
        await self._action("opening a segmentation", self._load_segmentation(Path(path)))

    async def _load_segmentation(self, path: Path) -> None:
        if self.volume_node is None:
            raise InputError("load a volume first, then its segmentation")
        if not path.name.lower().endswith((".seg.nrrd", *LABEL_SUFFIXES)):
            raise InputError(
                f"{path.name}: open a .seg.nrrd or a label map ({', '.join(LABEL_SUFFIXES)})"
            )
        node = self.editor.load_segmentation_from_file(str(path))
        if node is None or node.GetSegmentation().GetNumberOfSegments() == 0:
            if node is not None:
                self.app.scene.RemoveNode(node)
            raise InputError(f"{path.name} holds no segmentation")
        volume, previous = self.volume_node, self.segmentation_node
        node.SetName(previous.GetName())
        self.open_volumes[volume.GetID()] = (volume, node)
        self.show_volume(volume.GetID())
        self._release(previous)
        count = node.GetSegmentation().GetNumberOfSegments()
        self.report.status = f"Opened {path.name}: {count} segment{'s' if count > 1 else ''}."

    def add_segment(self, name: str = "") -> str:
        """A new empty segment, selected, with the MiniSAM effect active."""
        if self.segmentation_node is None:
            raise InputError("load a volume first")
        count = self.editor.n_segments + 1
        name = name or f"Segment {count}"
        segment_id = self.editor.add_empty_segment(segment_name=name)
        self.select_segment(segment_id)
        self._finish(f"Added {name}: click on a structure or drag a box.")
        return segment_id

    def select_segment(self, segment_id: str) -> None:
        if segment_id not in self.editor.get_segment_ids():
            raise InputError(f"segment {segment_id!r} does not exist")
        self.editor.set_active_segment_id(segment_id)
        self.editor.set_active_effect_type(MiniSAMEffect)
        self._changed()

    async def delete_segment(self, segment_id: str | None = None) -> None:
        """Delete a segment (default: the selected one) as one undo step; the logic forgets its prompts
        and their markups (Undo brings its voxels back, not its prompts)."""
        await self._action("deleting a segment", self._delete_segment(segment_id))

    async def _delete_segment(self, segment_id: str | None) -> None:
        _, segmentation, selected = self._targets()
        segment_id = segment_id or selected
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise InputError(f"segment {segment_id!r} does not exist")
        name, ids = segment.GetName(), self.editor.get_segment_ids()
        self.editor.active_segmentation.remove_segment(segment_id)  # trame-slicer's undo command
        self.logic.forget_segment(segmentation.GetID(), segment_id, self.app.scene)
        last = self._last_edit  # C would write its next candidate into the deleted segment
        if last is not None and (last.owner is None or last.owner.segment_id == segment_id):
            self._last_edit = None
        remaining = self.editor.get_segment_ids()
        if segment_id == selected and remaining:
            self.select_segment(remaining[max(ids.index(segment_id) - 1, 0)])
        elif not remaining:
            self.editor.set_active_segment_id("")  # nothing to edit until a segment is added
        self.report.status = f"Deleted {name}." + ("" if remaining else " Add a segment.")

    def segment_labels(self, segment_id: str | None = None) -> np.ndarray:
        """The segment as (Z, Y, X) uint8 0/1 on the volume's grid."""
        return segment_array(
            self.segmentation_node, segment_id or self.editor.active_segment_id, self.volume_node
        )

    # -- prompts ---------------------------------------------------------------------------------------

    def on_gesture(self, slice_node, action: Gesture, ras: np.ndarray) -> None:
        """The effect's handler: segment the slice under the gesture, off the event loop."""
        self.spawn(self.prompt(slice_node, action, ras))

    async def prompt(self, slice_node, action: Gesture, ras: np.ndarray) -> SliceEdit | None:
        """One gesture -> the slice's new mask in the selected segment, as one undo step."""
        return await self._action("segmenting a slice", self._prompt(slice_node, action, ras))

    def on_shortcut(self, action: str) -> None:
        """The effect's key handler: C = SAM's next candidate mask, P = propagate."""
        if action == "next candidate":
            self.spawn(self.next_candidate())
        elif action == "propagate":
            self.spawn(self.propagate())

    async def next_candidate(self) -> SliceEdit | None:
        """Replace the latest single click's mask with SAM's next candidate (one more undo step)."""
        return await self._action("switching to the next candidate mask", self._next_candidate())

    async def _next_candidate(self) -> SliceEdit:
        volume, segmentation, segment_id = self._targets()
        if self._last_edit is None:
            raise PromptError("click on a structure first: a single click gets SAM's three masks")
        with self.editor.active_segment_modifier.group_undo_commands("MiniSAM next candidate"):
            edit = self.logic.apply_next_candidate(
                self._segment_editor(), volume, segmentation, segment_id, self._last_edit
            )
        self._show_edit(edit)
        return edit

    async def _prompt(self, slice_node, action: Gesture, ras: np.ndarray) -> SliceEdit:
        volume, segmentation, segment_id = self._targets()
        normal = [slice_node.GetSliceToRAS().GetElement(row, 2) for row in range(3)]
        ijk = ras_to_ijk(volume, ras)
        points = {"positive": "positive_ijk", "negative": "negative_ijk", "box": "box_ijk"}
        prompt_ijk = {points[action.kind]: ijk.tolist()}
        shape = tuple(reversed(volume.GetImageData().GetDimensions()))
        axis, index, _ = ijk_to_slice_prompt(shape, slice_axis(volume, normal), **prompt_ijk)
        await self.run(self.logic.load)
        session = self.logic.session(volume)  # MRML reads: on the event loop's thread
        await self.run(lambda: session.embedding(axis, index))  # the encoder, off the loop
        edit = self.logic.prompt_slice(  # the decoder only now (the embedding is cached)
            volume, normal, segmentation_node=segmentation, segment_id=segment_id, **prompt_ijk
        )
        self._last_edit = None
        with self.editor.active_segment_modifier.group_undo_commands("MiniSAM prompt"):
            self.logic.apply_edit(self._segment_editor(), volume, segmentation, segment_id, edit)
        self._last_edit = edit
        self.report.prompt = asdict(
            PromptReport(
                kind=action.kind,
                ras=np.round(ras, 3).tolist(),
                ijk=np.round(ijk, 3).tolist(),
                axis=edit.axis,
                slice=edit.index,
                score=round(edit.score, 4),
                voxels=int(edit.mask.sum()),
            )
        )
        self._show_edit(edit)
        return edit

    def _show_edit(self, edit: SliceEdit) -> None:
        count = 0 if edit.candidates is None else len(edit.candidates)
        choice = f"; mask {edit.choice + 1} of {count}, C for the next" if count > 1 else ""
        if self.report.prompt is not None:
            self.report.prompt.update(score=round(edit.score, 4), voxels=int(edit.mask.sum()))
        self.report.status = (
            f"Slice {edit.index}: predicted IoU {edit.score:.2f}, {int(edit.mask.sum())} voxels"
            f"{choice} ({self.logic.describe()})."
        )

    async def choose(
        self,
        model: str | None = None,
        adapter: str | None = None,
        modality: str | None = None,
        runtime: str | None = None,
    ) -> None:
        """Segment with another model, adapter choice, intensity preset or encoder runtime from the next
        prompt on (the model and its runtime are made ready now, off the event loop; a bad choice leaves
        the previous one)."""
        await self._action("loading the model", self._choose(model, adapter, modality, runtime))

    async def _choose(self, model, adapter, modality, runtime) -> None:
        from minisam.modality import check_preset
        from minisam.runtime import check_runtime

        logic = self.logic
        before = logic.model_spec, logic.adapter, logic.modality, logic.runtime
        try:
            if modality is not None:
                logic.modality = modality if modality == "auto" else check_preset(modality)
            if runtime is not None:
                logic.runtime = check_runtime(runtime, "runtime")
            logic.model_spec = model or logic.model_spec
            logic.adapter = adapter or logic.adapter
            await self.run(logic.load)
            self.report.adapters = await self.run(logic.available_adapters)
            if self.volume_node is not None:
                logic.session(self.volume_node)  # resolves the adapter now: a bad one fails here
        except BaseException:
            logic.model_spec, logic.adapter, logic.modality, logic.runtime = before
            raise
        finally:
            self._show_choice()
        self.report.status = f"Segmenting with {logic.describe()}."

    def _show_choice(self) -> None:
        self.report.model = self.logic.model_spec
        self.report.adapter = self.logic.adapter
        self.report.modality = self.logic.modality
        self.report.runtime = self.logic.runtime

    def focus(self, slice_node) -> None:
        """A slice view shows another slice: the logic embeds it and its neighbours in the background
        (only once the model is ready, never while an action runs; never an error)."""
        if self.volume_node is None or self.report.busy:
            return
        try:
            self.logic.focus_view(self.volume_node, slice_node)
        except MiniSAMError:
            pass  # an oblique view or a slice off the volume: nothing to prepare

    async def propagate(self, settings: PropagationSettings | None = None):
        """Propagate the selected segment's prompts through the volume (progress in the report,
        :meth:`cancel` stops it: the slices done so far are kept), written as one undo step."""
        return await self._action("propagating", self._propagate(settings))

    async def _propagate(self, settings: PropagationSettings | None):
        volume, segmentation, segment_id = self._targets()
        axis, prompts = self.logic.remembered_prompts(volume, segmentation, segment_id)
        if not prompts:
            raise PromptError("click on the structure or drag a box on a slice before propagating")
        loop = asyncio.get_running_loop()
        self._cancel = False
        self.report.progress = [0, 0]

        def progress(done: int, total: int) -> bool:
            loop.call_soon_threadsafe(self._show_progress, done, total)
            return not self._cancel

        await self.run(self.logic.load)
        self.logic.session(volume)  # MRML reads here; the worker then finds the session ready
        result = await self.run(
            lambda: self.logic.propagate(volume, axis, prompts, settings, progress)
        )
        with self.editor.active_segment_modifier.group_undo_commands("MiniSAM propagation"):
            self.logic.write_slices(
                self._segment_editor(), volume, segmentation, segment_id, result.labels, axis,
                sorted(result.slices),
            )  # fmt: skip
        scores = [item.score for item in result.slices.values()] or [float("nan")]
        cancelled = " (cancelled)" if result.cancelled else ""
        self.report.status = (
            f"Propagation filled {len(result.slices)} slices{cancelled}, predicted IoU "
            f"{min(scores):.2f}..{max(scores):.2f} ({self.logic.describe()})."
        )
        return result

    def cancel(self) -> None:
        """Stop a running propagation after its current slice."""
        self._cancel = True

    def _show_progress(self, done: int, total: int) -> None:
        self.report.progress = [int(done), int(total)]
        self._changed()

    # -- undo, save ------------------------------------------------------------------------------------

    def undo(self) -> None:
        if self.undo_stack.can_undo():
            self.undo_stack.undo()
        self._finish("Undone." if self.undo_stack.can_redo() else self.report.status)

    def redo(self) -> None:
        if self.undo_stack.can_redo():
            self.undo_stack.redo()
        self._finish("Redone.")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the segmentation: ``.seg.nrrd`` (all segments, Slicer's format), or a label map
        (``.nii.gz``, ``.nii``, ``.nrrd``) on the volume's grid; a relative path goes into
        :attr:`output_dir`."""
        target = Path(path)
        if not target.is_absolute():
            target = self.output_dir / target
        self.write(target)
        self.report.saved = str(target)
        self._finish(f"Saved {target.name}.")
        return target

    def write(self, target: Path) -> None:
        """:meth:`save` without the report (also what a browser download sends)."""
        if self.segmentation_node is None:
            raise InputError("load a volume first")
        if not target.parent.is_dir():
            raise OutputError(f"folder {target.parent} does not exist")
        name = target.name.lower()
        if name.endswith(".seg.nrrd"):
            write_segmentation(self.segmentation_node, target)
        elif name.endswith(LABEL_SUFFIXES):
            self.editor.export_segmentation_to_file(self.segmentation_node, str(target))
        else:
            raise OutputError(f"save as .seg.nrrd or a label map ({', '.join(LABEL_SUFFIXES)})")

    # -- running ---------------------------------------------------------------------------------------

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` on the model thread; the event loop goes on meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def spawn(self, action: Awaitable) -> asyncio.Task:
        """Run ``action`` as a task of the running event loop (kept until it ends)."""
        task = asyncio.ensure_future(action)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def idle(self) -> None:
        """Wait until every spawned action has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _action(self, what: str, work: Awaitable[T]) -> T | None:
        """One action at a time; a MiniSAM error ends it with one line in the report."""
        if self.report.busy:
            if asyncio.iscoroutine(work):
                work.close()
            self._fail(f"MiniSAM is busy {self.report.busy}: wait until it has finished")
            return None
        self.report.busy, self.report.error = what, ""
        self._changed()
        try:
            return await work
        except MiniSAMError as error:
            self._fail(str(error))
        except Exception as error:  # noqa: BLE001 - one line for the user, the trace in the log
            LOG.exception("MiniSAM web action failed")
            self._fail(f"{type(error).__name__}: {error}")
        finally:
            self.report.busy = ""
            self._finish(self.report.status)
        return None

    def _targets(self):
        segment_id = self.editor.active_segment_id
        if self.volume_node is None or self.segmentation_node is None or not segment_id:
            raise InputError("load a volume and select a segment first")
        return self.volume_node, self.segmentation_node, segment_id

    def _segment_editor(self) -> TrameSegmentEditor:
        return TrameSegmentEditor(self.editor.active_segment_modifier)

    def _fail(self, message: str) -> None:
        self.report.error = message
        self.report.status = f"Error: {message}"
        self._changed()

    def _finish(self, status: str) -> None:
        self.report.status = status
        self.report.actions += 1
        self._show_prompts()
        self._changed()

    def _show_prompts(self) -> None:
        """The selected segment's prompts as markups in the views (the shared ``show_prompts``: points,
        the box as an ROI; prompts taken back by Undo disappear); moving one segments its slice again."""
        segment_id = self.editor.active_segment_id
        if self.volume_node is None or not segment_id or self.report.busy:
            return
        from MiniSAMSegmentLib.prompt_book import Owner

        volume, segmentation = self.volume_node, self.segmentation_node
        self.logic.show_prompts(volume, segmentation, segment_id)
        self._unwatch_markups()
        owner = Owner(volume.GetID(), segmentation.GetID(), segment_id)
        for axis in range(3):
            points, boxes = prompt_markups.nodes_of(self.app.scene, owner, axis)
            for node in ([points] if points is not None else []) + list(boxes.values()):

                def moved(caller, event, axis=axis) -> None:
                    self.spawn(self.reprompt(axis))

                tag = node.AddObserver(node.PointEndInteractionEvent, moved)
                self._markup_observations.append((node, tag))

    def _unwatch_markups(self) -> None:
        for node, tag in self._markup_observations:
            node.RemoveObserver(tag)
        self._markup_observations = []

    async def reprompt(self, axis: int) -> None:
        """Segment again the slices whose prompt markups were moved (each one undo step)."""
        await self._action("segmenting a slice again after a prompt moved", self._reprompt(axis))

    async def _reprompt(self, axis: int) -> None:
        volume, segmentation, segment_id = self._targets()
        for index in self.logic.moved_prompts(volume, segmentation, segment_id, axis):
            with self.editor.active_segment_modifier.group_undo_commands("MiniSAM moved prompt"):
                edit = self.logic.reprompt_from_markups(
                    self._segment_editor(), volume, segmentation, segment_id, axis, index
                )
            self._last_edit = edit
            self._show_edit(edit)

    def _changed(self) -> None:
        report = self.report
        report.can_undo = self.undo_stack.can_undo()
        report.can_redo = self.undo_stack.can_redo()
        report.segment_id = self.editor.active_segment_id or ""
        report.volumes = [
            {"id": volume_id, "name": volume.GetName()}
            for volume_id, (volume, _) in self.open_volumes.items()
        ]
        report.volume_id = self.volume_node.GetID() if self.volume_node is not None else ""
        counting = self.volume_node is not None and not report.busy
        report.segments = [
            {
                "id": segment_id,
                "name": props.name,
                "color": props.color_hex,
                "voxels": int(self.segment_labels(segment_id).sum()) if counting else None,
            }
            for segment_id, props in self.editor.get_all_segment_properties().items()
        ]
        selected = [s["voxels"] for s in report.segments if s["id"] == report.segment_id]
        report.segment_voxels = (selected[0] or 0) if selected else 0
        self._publish(report)

    def close(self) -> None:
        """Stop the model thread (a running action finishes first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
