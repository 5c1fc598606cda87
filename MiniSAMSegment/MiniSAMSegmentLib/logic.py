"""MiniSAMSegment's logic: volume node -> cached SAM session -> masks -> segments. MRML level, no Qt.

The Segment Editor effect, the module's self-test and the headless batch script all go through
:class:`MiniSAMSegmentLogic`; the geometry and segment helpers it builds on are re-exported here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import slicer
import vtk

from minisam.adapters.choice import AdapterChoice, resolve_adapter
from minisam.checkpoints import LoadedModel
from minisam.embedding_cache import DEFAULT_BUDGET_BYTES, EmbeddingCache
from minisam.engine import Prediction, SamEngine
from minisam.errors import InputError, ModelError, PromptError
from minisam.intensity import normalize_intensity
from minisam.modality import AUTO, adapter_family
from minisam.model_loader import load_model
from minisam.prompts import Prompt
from minisam.propagation import PropagationSettings
from minisam.runtime import check_precision, check_runtime
from minisam.volume_session import ProgressCallback, Pump, VolumeResult, VolumeSession

from . import prompt_markups
from .busy import BusyError, BusyGuard, run_in_background
from .dependencies import resolve_device
from .prompt_book import Owner, PromptBook
from .segment_io import (
    labelmap_oriented_image,
    replace_modifiers,
    segment_array,
    segment_region,
    write_mask_to_segment,
    write_segmentation,
)
from .slice_geometry import (
    SlicePrompt,
    ijk_to_slice_prompt,
    ras_to_ijk,
    ras_to_slice_prompt,
    slice_axis,
)
from .volume_node import (
    dicom_modality,
    geometry_image,
    normalization_modality,
    volume_arrays,
)

__all__ = [
    "ADAPTER_AUTO",
    "ADAPTER_NONE",
    "AdapterChoice",
    "BusyError",
    "BusyGuard",
    "MiniSAMSegmentLogic",
    "SegmentEditor",
    "SliceEdit",
    "SlicePrompt",
    "dicom_modality",
    "geometry_image",
    "ijk_to_slice_prompt",
    "labelmap_oriented_image",
    "normalization_modality",
    "ras_to_ijk",
    "ras_to_slice_prompt",
    "replace_modifiers",
    "segment_array",
    "slice_axis",
    "volume_arrays",
    "write_mask_to_segment",
    "write_segmentation",
]


class Candidates(Sequence):
    """SAM's masks for one prompt, best first, made at the slice's resolution only when one other
    than the best is asked for (a click shows the best; "next candidate" upsamples the rest)."""

    def __init__(self, prediction: Prediction) -> None:
        self._prediction = prediction

    def __len__(self) -> int:
        return len(self._prediction.scores)

    def __getitem__(self, index):
        return self._prediction.masks[index]


class SliceEdit(NamedTuple):
    """What one click or box in a slice view produced: the slice and its new mask."""

    axis: int  # numpy axis of the (Z, Y, X) array sliced along
    index: int  # the slice
    mask: np.ndarray  # (H, W) bool, the slice's new content for the selected segment
    score: float  # the model's predicted IoU
    prompt: Prompt  # the slice's combined prompt (every click and box on it so far)
    owner: Owner | None = None  # whose prompts the book merged it with (None: not remembered)
    # SAM's (H, W) bool masks for the prompt, best first
    candidates: Sequence[np.ndarray] | None = None
    scores: tuple[float, ...] = ()  # their predicted IoU
    choice: int = 0  # which candidate ``mask`` is

    def next_candidate(self) -> SliceEdit:
        """The same edit with the next of SAM's candidate masks (a lone click has four: its refined
        mask, then SAM's three as they came, part, organ, both; cycling returns to the first). An edit
        with one mask gives itself."""
        count = 0 if self.candidates is None else len(self.candidates)
        if count < 2:
            return self
        choice = (self.choice + 1) % count
        return self._replace(mask=self.candidates[choice], score=self.scores[choice], choice=choice)


class SegmentEditor(Protocol):
    """What writing into a segment needs of the Segment Editor. In Slicer the effect wraps its
    ``scriptedEffect``; in plain Python a wrapper of ``vtkSlicerSegmentEditorLogic`` does the same."""

    def reference_geometry(self):
        """The editor's ``defaultModifierLabelmap()`` (the segmentation's reference geometry)."""

    def save_state_for_undo(self) -> None: ...

    def modify_selected_segment(self, modifier, remove: bool) -> None:
        """``modifySelectedSegmentByLabelmap`` with ModificationModeRemove (``remove``) or Add; masking
        and overwrite settings apply."""


class SliceWrite(NamedTuple):
    """One undoable write of slices into the selected segment."""

    region: object  # vtkOrientedImageData: the written slices on the segmentation's reference grid
    before: bytes  # digest of the segment's voxels in ``region`` before the write
    after: bytes  # ... and after it


ADAPTER_AUTO = AUTO
"""Adapter choice: the library's adapter for the volume's family (its DICOM Modality, else the family of
its normalisation preset: "ct-lung" is CT) trained on the loaded base model; none when there is none."""
ADAPTER_NONE = "none"
"""Adapter choice: the base model ("base" means the same)."""


class MiniSAMSegmentLogic:
    """Holds the model (loaded on first use, one per model spec), the modality adapters loaded into it, an
    embedding cache shared by all volumes, and one :class:`VolumeSession` per volume node.

    A session is keyed by the node ID, the modification time of its image data, the intensity modality, the
    model, the device and the active adapter, so editing the voxels or changing the modality or the adapter
    re-normalises the volume or recomputes embeddings (embeddings of each adapter stay cached side by side).

    ``adapter`` is :data:`ADAPTER_AUTO` (default), :data:`ADAPTER_NONE`, an installed adapter's name or an
    adapter folder (see ``minisam segment --adapter``). Adapters are loaded into the model once and then
    switched in milliseconds (``minisam.adapters.AdapterSwitcher``); every :meth:`session` call activates
    the adapter of its volume, so use a session right after getting it.

    :attr:`book` remembers the prompts per volume, segment and axis. With :meth:`observe_scene` the sessions
    and prompts of removed nodes and segments are released, and everything when the scene closes;
    :meth:`release` releases everything and stops observing.

    One action at a time: :meth:`load`, :meth:`prompt_slice`, :meth:`predict_on_slice`, :meth:`segment`,
    :meth:`propagate` and :meth:`clear_prompts` hold :attr:`guard` (a :class:`BusyGuard`, shared with the
    effect's package installation), so one of them called while another runs, e.g. a click handled while
    a propagation processes GUI events, raises :class:`BusyError` (one line, nothing changed) instead of
    running inside it. ``pump`` (of :meth:`load` and :meth:`prompt_slice`) moves the model loading and the
    slice encoder off the calling thread, calling ``pump()`` meanwhile (see :func:`run_in_background`).

    ``runtime`` is where the image encoder and the mask decoder run, as ``minisam segment --runtime`` (auto,
    torch, openvino, onnxruntime; torch by default here, the effect and the batch script pass their "auto"),
    ``precision`` its arithmetic, as ``--precision`` (auto, f32, bf16, int8; the last two OpenVINO only).

    With ``background`` (default), every session embeds ahead of the user on a worker thread
    (:mod:`minisam.precompute`): :meth:`focus_slice` (the slice a view shows) and each prompt queue that
    slice and its neighbours, propagation queues its next slices; a click then finds its embedding
    cached or waits for the one in flight. A session's pending work is dropped when the session is
    replaced (voxels, modality, model, runtime or adapter changed) or released.
    """

    def __init__(
        self,
        model_spec: str = "default",
        device: str = "auto",
        modality: str = "auto",
        cache_bytes: int = DEFAULT_BUDGET_BYTES,
        loader: Callable[[str], LoadedModel] = load_model,
        adapter: str = ADAPTER_AUTO,
        library=None,
        guard: BusyGuard | None = None,
        runtime: str = "torch",
        background: bool = True,
        precision: str = "auto",
    ) -> None:
        self.model_spec = model_spec
        self.device = device
        self.runtime = runtime
        self.precision = precision
        self.background = background
        self.modality = modality
        self.adapter = adapter
        # minisam.adapters.AdapterLibrary to pick adapters from; None: AdapterLibrary() (the user's
        # library, $MINISAM_ADAPTERS, plus the adapters built into the package).
        self.library = library
        self.cache = EmbeddingCache(cache_bytes)
        self.guard = guard if guard is not None else BusyGuard()
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._engines: dict[tuple[str, str, str, str], SamEngine] = {}
        self._adapter_in_use: dict[str, tuple | None] = {}  # model spec -> (folder, created) active
        self._sessions: dict[str, tuple[tuple, VolumeSession]] = {}
        self._presets: dict[str, tuple[tuple, str]] = {}  # volume id -> (key, normalisation preset)
        # model spec -> minisam.adapters.AdapterSwitcher (peft is imported only when an adapter is used)
        self._switchers: dict[str, object] = {}
        self.book = PromptBook()
        self._observations: list[tuple[object, int]] = []  # (observed VTK object, observer tag)
        self._scene = None
        self._segmentations: set[str] = (
            set()
        )  # IDs of the segmentation nodes observed for segment removal

    # -- model -------------------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        """The model named by ``model_spec`` (loaded once; later calls reuse it)."""
        if self.model_spec not in self._models:
            self._models[self.model_spec] = self._loader(self.model_spec)
        return self._models[self.model_spec]

    def load(self, pump: Callable[[], object] | None = None) -> LoadedModel:
        """The model of :attr:`model_spec`, loaded now if it is not (reading, downloading and checking
        its weights can take minutes): on a worker thread while ``pump()`` runs in this one, if given.

        The encoder runtime is prepared with it (an OpenVINO or ONNX Runtime export is made or checked).

        Raises:
          BusyError: another action is running.
        """
        if self.is_ready():
            return self.model
        with self.guard(f"loading model {self.model_spec}"):

            def load() -> LoadedModel:
                self.engine  # noqa: B018 - builds the engine: the model and its encoder runtime
                return self.model

            return run_in_background(load, pump, name="MiniSAM model")

    def model_is_loaded(self, model_spec: str | None = None) -> bool:
        """Whether the model of ``model_spec`` (default: :attr:`model_spec`) is loaded already."""
        return (model_spec or self.model_spec) in self._models

    def is_ready(self) -> bool:
        """Whether the model and its engine for the current device, runtime and precision are ready
        (:meth:`load` has nothing left to do)."""
        return self.model_is_loaded() and self._engine_key() in self._engines

    def _engine_key(self) -> tuple[str, str, str, str]:
        runtime = check_runtime(self.runtime, "runtime")
        precision = check_precision(self.precision, runtime, "precision")
        return self.model_spec, resolve_device(self.device), runtime, precision

    @property
    def engine(self) -> SamEngine:
        """The model's engine for :attr:`device`, :attr:`runtime` and :attr:`precision` (built once for
        each).

        Raises:
          ModelError / PromptError: one line, for an unusable device or a runtime that cannot run here.
        """
        key = self._engine_key()
        if key not in self._engines:
            loaded = self.model
            _, device, runtime, precision = key
            try:
                self._engines[key] = SamEngine(
                    loaded.sam, loaded.config, device, runtime, precision
                )
            except (RuntimeError, AssertionError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ModelError(f"device {device} is not usable here ({reason})") from None
        return self._engines[key]

    # -- adapters ----------------------------------------------------------------------------------------

    def _library(self):
        # imports peft, so only when adapters are asked about
        from minisam.adapters import AdapterLibrary

        return self.library if self.library is not None else AdapterLibrary()

    def available_adapters(self) -> list[str]:
        """Names of the library's adapters trained on the current model (loads the model)."""
        base = self.model.base_hash()
        return [info.name for info in self._library().list() if info.base_hash == base]

    def adapter_for(self, volume_node, modality: str | None = None) -> AdapterChoice | None:
        """The adapter :attr:`adapter` chooses for ``volume_node`` (None: the base model); changes nothing.

        ``modality``: the volume's normalisation preset, if known already (else it is worked out).
        The choice is resolved by ``minisam.adapters.choice.resolve_adapter``, as on the command line.

        Raises:
          ModelError: one line, for an unknown adapter name, a missing folder or an adapter trained on
            another base model.
        """

        def family() -> str | None:
            preset = modality or normalization_modality(volume_node, self.modality)
            return adapter_family(dicom_modality(volume_node), preset)

        return resolve_adapter(self.adapter, self.model.base_hash(), family, self.library)

    def _activate_adapter(self, volume_node, modality: str | None = None) -> str:
        """Load (once) and activate the adapter for ``volume_node``; the model's state for cache keys.

        Nothing changes when the choice is bad: the choice is resolved, and the adapter read and checked
        against the model, before the model is touched.
        """
        chosen = self.adapter_for(volume_node, modality)
        switcher = self._switchers.get(self.model_spec)
        if chosen is None and switcher is None:
            return "base"
        if switcher is None:
            from minisam.adapters import AdapterSwitcher

            switcher = self._switchers[self.model_spec] = AdapterSwitcher(self.model)
        wanted = None if chosen is None else (str(chosen.folder.resolve()), chosen.created)
        if wanted == self._adapter_in_use.get(self.model_spec):
            return switcher.use(chosen)
        # What the encoder computes changes: no background embedding may run under the new adapter
        # with a session key of the old one. Queued ones are dropped, and the one a worker has taken
        # (running, or about to take the encoder lock) ends first: the switch waits up to one encoder call.
        workers = [held.precompute for _, held in self._sessions.values() if held.precompute]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            worker.wait_idle()
        with self.engine.encoder_lock:  # an encoder call made in another thread meanwhile
            state = switcher.use(chosen)
        self._adapter_in_use[self.model_spec] = wanted
        return state

    @property
    def active_adapter(self) -> str | None:
        """Name of the adapter the current model runs now (None: none), as of the last :meth:`session`."""
        switcher = self._switchers.get(self.model_spec)
        return None if switcher is None else switcher.own_name(switcher.active)

    def describe(self) -> str:
        """What segments now, e.g. "model default + adapter us_hc18" (as of the last :meth:`session`)."""
        adapter = self.active_adapter
        return f"model {self.model_spec}" + (f" + adapter {adapter}" if adapter else "")

    # -- sessions ----------------------------------------------------------------------------------------

    def session(self, volume_node) -> VolumeSession:
        """The cached session of ``volume_node``, rebuilt when its voxels, the modality, the model or the
        adapter changed; the volume's adapter is made active."""
        modality = self._preset(volume_node)
        adapter_state = self._activate_adapter(volume_node, modality)
        engine = self.engine
        key = (
            volume_node.GetID(),
            volume_node.GetImageData().GetMTime(),
            modality,
            self.model_spec,
            str(engine.device),
            self._engine_key()[2:],
            adapter_state,
        )
        cached = self._sessions.get(volume_node.GetID())
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            cached[1].close()  # its queued embeddings are of the volume as it was
        normalized = normalize_intensity(volume_arrays(volume_node).array, modality)
        session = VolumeSession(
            engine, normalized, cache=self.cache, key=key, background=self.background
        )
        self._sessions[volume_node.GetID()] = (key, session)
        return session

    def focus_slice(self, volume_node, view: str | int | Sequence[float], ras: Sequence[float]):
        """The slice through world position ``ras`` is shown in a view with normal ``view``: embed it
        and its neighbours in the background. Never loads a model and never waits for the encoder.

        Returns:
          (axis, index) of the slice, or None when nothing was queued: no background, the model is
          not ready, MiniSAM is busy with an action, or the view shows no slice of the volume (an
          oblique view, a position outside it).
        """
        if not self.background or volume_node is None or volume_node.GetImageData() is None:
            return None
        try:
            if not self.is_ready():
                return None
            with self.guard("queuing slices to embed"):
                axis = slice_axis(volume_node, view)
                ijk = ras_to_ijk(volume_node, [ras])[0]
                index = int(round(float(ijk[2 - axis])))  # numpy axis 0 is K
                session = self.session(volume_node)
                if not 0 <= index < session.slice_count(axis):
                    return None
                session.focus(axis, index)
                return axis, index
        except (BusyError, InputError, PromptError):
            return None

    def wait_for_background(self, timeout: float) -> bool:
        """Let the sessions' background workers run for up to ``timeout`` seconds while this thread
        waits (without the GIL); True when none has work left.

        Slicer keeps the GIL on its GUI thread while the Qt event loop idles, so a Python worker thread
        hardly advances there; the effect calls this from a timer while background work is pending.
        """
        for _, session in list(self._sessions.values()):
            if session.precompute is not None and not session.precompute.wait_idle(timeout):
                return False
        return True

    def focus_view(self, volume_node, slice_node):
        """:meth:`focus_slice` for the slice a ``vtkMRMLSliceNode`` shows (its SliceToRAS normal and
        origin); the effect calls it whenever a slice view moves."""
        slice_to_ras = slice_node.GetSliceToRAS()
        normal = [slice_to_ras.GetElement(row, 2) for row in range(3)]
        origin = [slice_to_ras.GetElement(row, 3) for row in range(3)]
        return self.focus_slice(volume_node, normal, origin)

    def _preset(self, volume_node) -> str:
        """The volume's normalisation preset, decided once per voxel content and modality choice (the
        automatic guess looks at every voxel)."""
        key = (volume_node.GetImageData().GetMTime(), self.modality)
        cached = self._presets.get(volume_node.GetID())
        if cached is None or cached[0] != key:
            cached = (key, normalization_modality(volume_node, self.modality))
            self._presets[volume_node.GetID()] = cached
        return cached[1]

    def held_volume_ids(self) -> list[str]:
        """IDs of the volume nodes whose sessions (normalised copies) are held now."""
        return sorted(self._sessions)

    def forget(self, volume_node=None) -> None:
        """Drop the session of one volume node (all when None) and the cached embeddings."""
        if volume_node is None:
            dropped = [held for _, held in self._sessions.values()]
            self._sessions.clear()
            self._presets.clear()
        else:
            dropped = [held for _, held in [self._sessions.pop(volume_node.GetID(), (None, None))]]
            self._presets.pop(volume_node.GetID(), None)
        for session in dropped:
            if session is not None:
                session.close()  # pending embeddings dropped; the one in flight discarded
        self.cache.clear()

    # -- scene events ------------------------------------------------------------------------------------

    def observe_scene(self, scene) -> None:
        """Release what belongs to nodes removed from ``scene`` (sessions of volumes, prompts of volumes,
        segmentations and segments) and everything when the scene closes; take the prompts of a loaded
        scene from its markups (:meth:`restore_prompts`)."""
        if scene is self._scene:
            return
        self._stop_observing()
        self._scene = scene

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def node_removed(caller, event, node) -> None:
            self.forget_node(node)

        self._observe(scene, scene.NodeRemovedEvent, node_removed)
        self._observe(scene, scene.EndCloseEvent, lambda caller, event: self.release_data())
        # a loaded scene brings the prompt markups it was saved with
        self._observe(
            scene, scene.EndImportEvent, lambda caller, event: self.restore_prompts(scene)
        )

    def _observe(self, subject, event: int, callback) -> None:
        self._observations.append((subject, subject.AddObserver(event, callback)))

    def _watch_segments(self, segmentation_node) -> None:
        """Forget a segment's prompts when it is removed from ``segmentation_node``."""
        if self._scene is None or segmentation_node.GetID() in self._segmentations:
            return
        self._segmentations.add(segmentation_node.GetID())
        node_id = segmentation_node.GetID()

        @vtk.calldata_type(vtk.VTK_STRING)
        def segment_removed(caller, event, segment_id) -> None:
            self.forget_segment(node_id, segment_id)

        self._observe(segmentation_node, slicer.vtkSegmentation.SegmentRemoved, segment_removed)

    def forget_segment(self, segmentation_id: str, segment_id: str, scene=None) -> None:
        """Drop a removed segment's prompts and their markups in ``scene`` (default: the observed one)."""
        self.book.drop(segmentation_id=segmentation_id, segment_id=segment_id)
        scene = scene if scene is not None else self._scene
        if scene is not None:
            prompt_markups.remove(scene, segmentation_id, segment_id)

    def forget_node(self, node, scene=None) -> None:
        """Release what belongs to a removed volume or segmentation node: its session (normalised copy,
        background worker, cached embeddings), its prompts and their markups in ``scene`` (default: the
        observed one)."""
        node_id = node.GetID()
        if node_id in self._sessions or node_id in self._presets:
            self.forget(node)
        self.book.drop(volume_id=node_id)
        self.book.drop(segmentation_id=node_id)
        scene = scene if scene is not None else self._scene
        if scene is not None and not scene.IsClosing():
            prompt_markups.remove(scene, volume_id=node_id)
            prompt_markups.remove(scene, segmentation_id=node_id)
        if node_id in self._segmentations:
            self._segmentations.discard(node_id)
            for subject, tag in [o for o in self._observations if o[0] is node]:
                subject.RemoveObserver(tag)
                self._observations.remove((subject, tag))

    def _stop_observing(self) -> None:
        for subject, tag in self._observations:
            subject.RemoveObserver(tag)
        self._observations, self._segmentations, self._scene = [], set(), None

    def release_data(self) -> None:
        """Drop every session, cached embedding and prompt (the model stays loaded)."""
        self.forget()
        self.book.clear()

    def release(self) -> None:
        """:meth:`release_data`, stop observing the scene and unload the models (module cleanup)."""
        self._stop_observing()
        self.release_data()
        self._engines.clear()
        self._switchers.clear()
        self._models.clear()

    # -- segmentation ------------------------------------------------------------------------------------

    def predict_on_slice(
        self, volume_node, axis: int, index: int, prompt: Prompt, multimask: bool | None = None
    ) -> tuple[np.ndarray, float]:
        """(mask (H, W) bool, predicted IoU) for ``prompt`` on slice ``index`` along numpy ``axis``."""
        with self.guard("segmenting a slice"):
            prediction = self._predict(volume_node, axis, index, prompt, multimask)
        return prediction.mask, prediction.score

    def _predict(self, volume_node, axis, index, prompt, multimask=None, pump=None):
        session = self.session(volume_node)  # MRML reads: in this thread
        decoder = self.engine.decoder
        if pump is not None and not decoder.ready():
            # the first click with a new adapter exports the decoder with it (seconds, once per machine)
            run_in_background(decoder.prepare, pump, name="MiniSAM decoder export")
        if pump is not None and session.precompute is None:
            # The encoder, the slow part for a slice not seen yet, on a worker thread; the decoder
            # below then finds the embedding in the cache.
            run_in_background(lambda: session.embedding(axis, index), pump, name="MiniSAM encoder")
        # In a background session the worker embeds the slice (or has, or is at it) while this thread
        # waits, pumping; then the neighbours are queued.
        prediction = session.predict(axis, index, prompt, multimask=multimask, pump=pump)
        session.focus(axis, index)
        return prediction

    def prompt_slice(
        self,
        volume_node,
        view: str | int | Sequence[float],
        positive_ijk: Sequence[Sequence[float]] = (),
        negative_ijk: Sequence[Sequence[float]] = (),
        box_ijk: Sequence[Sequence[float]] | None = None,
        segmentation_node=None,
        segment_id: str | None = None,
        pump: Callable[[], object] | None = None,
    ) -> SliceEdit:
        """One interaction of the effect, from voxel positions to the slice's new mask.

        Arguments:
          volume_node: the source volume.
          view: the slice view's normal in world RAS (or a view name / array axis), see
            :func:`slice_axis`.
          positive_ijk, negative_ijk, box_ijk: the clicks and the box's corners as IJK positions.
          segmentation_node, segment_id: the segment being edited; the new prompt is merged into that
            segment's earlier prompts on the slice (kept in :attr:`book`; prompts whose edits were
            undone are dropped first). None: the new prompt alone.
          pump: with it, the slice's encoder runs on a worker thread while ``pump()`` runs in this one.

        Raises:
          BusyError: another action is running (nothing is remembered then).
        """
        with self.guard("segmenting a slice"):
            return self._prompt_slice(
                volume_node, view, positive_ijk, negative_ijk, box_ijk, segmentation_node,
                segment_id, pump,
            )  # fmt: skip

    def _prompt_slice(
        self, volume_node, view, positive_ijk, negative_ijk, box_ijk, segmentation_node, segment_id,
        pump,
    ) -> SliceEdit:  # fmt: skip
        image = volume_node.GetImageData() if volume_node is not None else None
        if image is None:
            raise InputError("select a source volume with image data first")
        shape = tuple(reversed(image.GetDimensions()))  # (Z, Y, X) without touching the voxels
        slice_prompt = ijk_to_slice_prompt(
            shape,
            slice_axis(volume_node, view),
            positive_ijk=positive_ijk,
            negative_ijk=negative_ijk,
            box_ijk=box_ijk,
            where=f"volume '{volume_node.GetName()}'",
        )
        axis, index, prompt = slice_prompt
        if segmentation_node is None or not segment_id:
            prediction = self._predict(volume_node, axis, index, prompt, pump=pump)
            return _edit(axis, index, prompt, None, prediction)
        owner = self._owner(volume_node, segmentation_node, segment_id)
        prompt = self.book.add(owner, axis, index, prompt)
        try:
            prediction = self._predict(volume_node, axis, index, prompt, pump=pump)
        except BaseException:
            self.book.take_back_last()
            raise
        return _edit(axis, index, prompt, owner, prediction)

    def _owner(self, volume_node, segmentation_node, segment_id: str) -> Owner:
        """The book's key for this segment, after dropping its prompts whose edits were undone."""
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            raise InputError(f"segment {segment_id!r} does not exist: select a segment first")
        self._watch_segments(segmentation_node)
        owner = Owner(volume_node.GetID(), segmentation_node.GetID(), segment_id)
        self.book.sync(
            owner, lambda region: _digest(segment_region(segmentation_node, segment_id, region))
        )
        return owner

    def remembered_prompts(
        self, volume_node, segmentation_node, segment_id: str
    ) -> tuple[int | None, dict[int, Prompt]]:
        """(axis, prompt per slice) of the segment's latest prompted axis ((None, {}) when none)."""
        with self.guard("reading the prompts"):
            owner = self._owner(volume_node, segmentation_node, segment_id)
            axis = self.book.latest_axis(owner)
            return axis, (self.book.prompts(owner, axis) if axis is not None else {})

    def write_slices(
        self,
        editor: SegmentEditor,
        volume_node,
        segmentation_node,
        segment_id: str,
        labels: np.ndarray,
        axis: int,
        indices: Sequence[int],
    ) -> SliceWrite:
        """Replace the given slices of the selected segment with ``labels`` as one undoable editor step, on
        the editor's reference geometry (so masking, overwrite and undo behave as for any effect)."""
        reference = editor.reference_geometry()
        if reference is None:
            raise InputError("the segmentation has no geometry yet: select a source volume first")
        clear, add = replace_modifiers(
            volume_node, labels, axis, indices, segmentation_node, reference=reference
        )
        before = _digest(segment_region(segmentation_node, segment_id, clear))
        editor.save_state_for_undo()
        editor.modify_selected_segment(clear, remove=True)
        editor.modify_selected_segment(add, remove=False)
        after = _digest(segment_region(segmentation_node, segment_id, clear))
        return SliceWrite(clear, before, after)

    def apply_edit(
        self,
        editor: SegmentEditor,
        volume_node,
        segmentation_node,
        segment_id: str,
        edit: SliceEdit,
    ) -> SliceWrite:
        """Write a :meth:`prompt_slice` result into the segment; Undo in the editor then also takes back
        the prompt (see :meth:`PromptBook.sync`)."""
        return self._write_latest_prompt(
            editor, volume_node, segmentation_node, segment_id, lambda: edit
        )[1]

    def _write_latest_prompt(
        self, editor: SegmentEditor, volume_node, segmentation_node, segment_id: str,
        make_edit: Callable[[], SliceEdit],
    ) -> tuple[SliceEdit, SliceWrite]:  # fmt: skip
        """Make the edit of the book's latest prompt and write it; if either fails the prompt is taken
        back, else its region is marked so that Undo in the editor takes it back too."""
        try:
            edit = make_edit()
            written = self.write_slices(
                editor, volume_node, segmentation_node, segment_id, edit.mask, edit.axis,
                [edit.index],
            )  # fmt: skip
        except BaseException:
            self.book.take_back_last()
            raise
        self.book.mark(written.region, written.before, written.after)
        return edit, written

    def apply_next_candidate(
        self,
        editor: SegmentEditor,
        volume_node,
        segmentation_node,
        segment_id: str,
        edit: SliceEdit,
    ) -> SliceEdit:
        """Replace the slice written by ``edit`` (the latest prompt) with SAM's next candidate mask, as
        one more undoable step; returns the new edit (cycle on by calling again with it).

        The prompt stays the latest one: Undo first goes back to the previous candidate, then takes the
        prompt back as usual.

        Raises:
          PromptError: the edit has one mask only (boxes and several clicks), or it is not the segment's
            latest prompt any more (undone, or another prompt came after it).
          BusyError: another action is running.
        """
        with self.guard("switching to the next candidate mask"):
            if edit.candidates is None or len(edit.candidates) < 2:
                raise PromptError(
                    "this prompt has one mask: only a single click gets SAM's candidate masks"
                )
            owner = self._owner(volume_node, segmentation_node, segment_id)  # drops undone prompts
            last = self.book.last_edit()
            if edit.owner != owner or last is None or last[:3] != (owner, edit.axis, edit.index):
                raise PromptError(
                    "the candidates belong to a prompt that was undone or followed by another: "
                    "click again"
                )
            following = edit.next_candidate()
            written = self.write_slices(
                editor, volume_node, segmentation_node, segment_id, following.mask,
                following.axis, [following.index],
            )  # fmt: skip
            before = last[3][0] if last[3] is not None else written.before
            self.book.mark(written.region, before, written.after)
            return following

    # -- prompts as markups ------------------------------------------------------------------------------

    def show_prompts(self, volume_node, segmentation_node, segment_id: str) -> None:
        """Show the segment's remembered prompts as markups in the scene (``prompt_markups``): a point
        list of its clicks, an ROI per box; prompts taken back by Undo disappear."""
        with self.guard("showing the prompts"):
            owner = self._owner(volume_node, segmentation_node, segment_id)
            segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
            for axis in range(3):
                pages = self.book.pages.get((owner, axis), {})
                prompt_markups.show(
                    volume_node.GetScene(), volume_node, owner, axis, pages,
                    segment.GetName() or segment_id,
                )  # fmt: skip

    def reprompt_from_markups(
        self,
        editor: SegmentEditor,
        volume_node,
        segmentation_node,
        segment_id: str,
        axis: int,
        index: int,
    ) -> SliceEdit:
        """Segment slice ``index`` again from its prompt markups as they are now (a point or the box was
        moved), as one undoable prompt and edit.

        Raises:
          PromptError: the slice has no prompt markups (any more), or a moved point left the volume.
          BusyError: another action is running.
        """
        with self.guard("segmenting a slice again after a prompt moved"):
            owner = self._owner(volume_node, segmentation_node, segment_id)
            prompts = prompt_markups.read(volume_node.GetScene(), volume_node, owner, axis)
            if index not in prompts:
                raise PromptError(f"slice {index} has no prompt to segment from any more")
            prompt = self.book.replace(owner, axis, index, prompt_markups.clicks_of(prompts[index]))
            edit, _ = self._write_latest_prompt(
                editor, volume_node, segmentation_node, segment_id,
                lambda: _edit(
                    axis, index, prompt, owner, self._predict(volume_node, axis, index, prompt)
                ),
            )  # fmt: skip
            return edit

    def moved_prompts(
        self, volume_node, segmentation_node, segment_id: str, axis: int
    ) -> list[int]:
        """Slices whose prompt markups no longer match the remembered prompts (the user moved a point
        or the box): the slices :meth:`reprompt_from_markups` should segment again."""
        owner = self._owner(volume_node, segmentation_node, segment_id)
        shown = prompt_markups.read(volume_node.GetScene(), volume_node, owner, axis)
        remembered = self.book.prompts(owner, axis)
        return sorted(
            index
            for index, prompt in shown.items()
            if index not in remembered or _prompt_key(prompt) != _prompt_key(remembered[index])
        )

    def restore_prompts(self, scene) -> int:
        """Remember the prompts that markups in ``scene`` hold (a saved scene was loaded); returns how
        many slices got prompts. Markups of nodes that are not in the scene are ignored."""
        restored = 0
        for owner, axis in prompt_markups.owners_in_scene(scene):
            volume_node = scene.GetNodeByID(owner.volume_id)
            segmentation_node = scene.GetNodeByID(owner.segmentation_id)
            if volume_node is None or segmentation_node is None:
                continue
            if segmentation_node.GetSegmentation().GetSegment(owner.segment_id) is None:
                continue
            self._watch_segments(segmentation_node)
            page = self.book.pages.setdefault((owner, axis), {})
            for index, prompt in prompt_markups.read(scene, volume_node, owner, axis).items():
                page[index] = prompt_markups.clicks_of(prompt)
                restored += 1
        return restored

    def segment(
        self,
        volume_node,
        axis: int,
        prompts: dict[int, Prompt],
        propagate: bool = False,
        settings: PropagationSettings | None = None,
        progress: ProgressCallback | None = None,
        pump: Pump | None = None,
    ) -> VolumeResult:
        """Masks on the prompted slices and, with ``propagate``, their neighbours; labels on the volume's grid.

        ``pump`` is called while this thread waits for the background worker's embeddings (a GUI thread
        processes events there).

        Raises:
          BusyError: another action is running (e.g. ``progress`` processed a click that prompts).
        """
        with self.guard("propagating" if propagate else "segmenting"):
            return self.session(volume_node).segment(
                axis, prompts, propagate=propagate, settings=settings, progress=progress, pump=pump
            )

    def clear_prompts(self, scene=None) -> None:
        """Forget every remembered prompt, and remove their markups from ``scene`` (refused with
        BusyError while an action runs)."""
        with self.guard("clearing the prompts"):
            self.book.clear()
            if scene is not None:
                prompt_markups.remove(scene)

    def propagate(
        self,
        volume_node,
        axis: int,
        prompts: dict[int, Prompt],
        settings: PropagationSettings | None = None,
        progress: ProgressCallback | None = None,
        pump: Pump | None = None,
    ) -> VolumeResult:
        """:meth:`segment` with propagation; ``progress(done, total)`` returning False cancels."""
        return self.segment(volume_node, axis, prompts, True, settings, progress, pump)

    # Segment writes are module functions; exposed here so callers need only the logic object.
    segment_region = staticmethod(segment_region)
    write_mask_to_segment = staticmethod(write_mask_to_segment)
    labelmap_oriented_image = staticmethod(labelmap_oriented_image)
    replace_modifiers = staticmethod(replace_modifiers)


def _edit(axis: int, index: int, prompt: Prompt, owner, prediction) -> SliceEdit:
    scores = tuple(float(score) for score in prediction.scores)
    return SliceEdit(
        axis, index, prediction.mask, scores[0], prompt, owner, Candidates(prediction), scores
    )


def _prompt_key(prompt: Prompt) -> tuple:
    return tuple(
        None if value is None else np.round(np.asarray(value, dtype=float), 3).tolist()
        for value in (prompt.points, prompt.labels, prompt.box)
    )


def _digest(voxels: np.ndarray) -> bytes:
    return hashlib.blake2b(np.packbits(voxels).tobytes() + repr(voxels.shape).encode()).digest()
