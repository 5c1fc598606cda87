"""Train a modality adapter on the slices a user annotated in Slicer, and install it. MRML level, no Qt.

Flow: :func:`annotated_slices` finds the slices of a volume that carry a drawn segment;
:meth:`MiniSAMTrainLogic.prepare` (MRML reads, so in the GUI thread) turns them into slice samples split
into training and validation blocks; :meth:`MiniSAMTrainLogic.run` (no MRML: any thread) trains the
adapter with :func:`minisam.training.adapter_trainer.train_adapter`, writes the adapter folder and installs
it into the adapter library, where MiniSAMSegment picks it up by modality. :class:`TrainingJob` runs that
second half on a ``threading.Thread`` with a thread-safe progress state and a cancel flag; the module's
panel polls it with a QTimer.

Importing this module needs numpy and slicer only; torch, peft and the trainer are imported when a
training is prepared, so the panel loads before the Python packages are installed.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import slicer
import vtk
from MiniSAMSegmentLib.dependencies import install_requirement
from MiniSAMSegmentLib.segment_io import labelmap_oriented_image, segment_array
from MiniSAMSegmentLib.volume_node import (
    dicom_modality,
    node_label,
    normalization_modality,
    volume_arrays,
)

from minisam.errors import InputError, MiniSAMError
from minisam.intensity import normalize_intensity, to_rgb
from minisam.modality import (
    AUTO,
    FAMILIES,
    family_for_dicom,
    family_of_preset,
    preset_for_family,
)
from minisam.training.splits import split_cases

__all__ = [
    "AXIS_NAMES",
    "COMMON_FAMILIES",
    "METHODS",
    "MIN_ANNOTATED_SLICES",
    "AnnotatedSlices",
    "JobState",
    "MiniSAMTrainLogic",
    "TrainResult",
    "TrainingJob",
    "TrainingPlan",
    "annotated_slices",
    "ensure_training_packages",
    "require_enough",
    "slice_blocks",
    "suggested_modality",
]

MIN_ANNOTATED_SLICES = 4
"""Fewest annotated slices a training accepts: at least two blocks, one to train on, one to validate."""
MAX_BLOCKS = 5
VAL_FRACTION = 0.2  # with at most MAX_BLOCKS blocks, split_cases then holds back exactly one block
AXIS_NAMES = ("K", "J", "I")  # numpy axis 0, 1, 2 of a (K, J, I) volume array
METHODS = ("lora", "adalora")
COMMON_FAMILIES = FAMILIES[:5]
"""Suggestions for the panel's modality field (CT, MR, US, XRAY, PET); any DICOM Modality code or
adapter family of ``minisam.modality`` is accepted."""
TRAINING_REQUIREMENTS = {
    "peft": "peft>=0.13",
    "bitsandbytes": "bitsandbytes>=0.45",
    "monai": "monai>=1.3",
}
"""Import name -> pip requirement of what training needs besides MiniSAMSegment's packages."""
_ALIGNED = 1e-3  # |cos| between slice normals must be this close to 1 (about 2.6 degrees)

Progress = Callable[[dict], "bool | None"]


# ------------------------------------------------------------------------------------ annotated slices


@dataclass(frozen=True)
class AnnotatedSlices:
    """Where segments are drawn: for each segment ID, the slice indices along ``axis`` with foreground.

    Each (slice, segment) pair is one training sample; slices where a segment is not drawn are
    unlabelled (the user did not annotate them), never negatives.
    """

    axis: int
    by_segment: dict[str, tuple[int, ...]]
    names: dict[str, str] = field(default_factory=dict)

    @property
    def slices(self) -> tuple[int, ...]:
        """Sorted indices of the slices where at least one of the segments is drawn."""
        return tuple(sorted({i for indices in self.by_segment.values() for i in indices}))

    @property
    def samples(self) -> int:
        """Number of (slice, segment) pairs."""
        return sum(len(indices) for indices in self.by_segment.values())

    def __len__(self) -> int:
        return len(self.slices)

    def describe(self) -> str:
        """One line for the panel, e.g. '8 annotated K slices (9 samples: edema 8, core 1)'."""
        parts = ", ".join(f"{self.names.get(s, s)} {len(i)}" for s, i in self.by_segment.items())
        plural = "" if len(self) == 1 else "s"
        return f"{len(self)} annotated {AXIS_NAMES[self.axis]} slice{plural} ({self.samples} samples: {parts})"


def annotated_slices(volumeNode, segmentationNode, segmentIds: Sequence[str], axis: int = 0):
    """The slices of ``volumeNode`` along numpy ``axis`` on which each segment is drawn.

    The segments are resampled onto the volume's voxel grid (``segment_io.segment_array``), so a
    segmentation on another grid of the same orientation works; the user's segmentation is only read.

    Raises:
      InputError: no volume, a 4D or vector volume, no segmentation or segment, a segment drawn
        outside the volume, or drawn on slices that are not parallel to the volume's ``axis`` slices.
    """
    return _read_segments(volumeNode, segmentationNode, segmentIds, axis)[0]


def require_enough(found: AnnotatedSlices, where: str = "the volume") -> None:
    """InputError unless ``found`` has at least :data:`MIN_ANNOTATED_SLICES` slices."""
    count, axis = len(found), AXIS_NAMES[found.axis]
    if count == 0:
        segments = ", ".join(repr(n) for n in found.names.values()) or "the selected segments"
        raise InputError(
            f"no {axis} slice of {where} has {segments} drawn on it: draw the structure on at least "
            f"{MIN_ANNOTATED_SLICES} slices (Segment Editor), then train"
        )
    if count < MIN_ANNOTATED_SLICES:
        raise InputError(
            f"only {count} annotated {axis} slice{'s' if count > 1 else ''} in {where}: adapter "
            f"training needs at least {MIN_ANNOTATED_SLICES} (some to train on, some to validate); "
            "draw the segments on more slices"
        )


def _read_segments(volume_node, segmentation_node, segment_ids, axis):
    """(AnnotatedSlices, {segment ID: (Z, Y, X) uint8 mask on the volume's grid})."""
    image = volume_node.GetImageData() if volume_node is not None else None
    components = image.GetNumberOfScalarComponents() if image is not None else 1
    if components != 1:
        raise InputError(
            f"volume {node_label(volume_node)} has {components} values per voxel (a vector, colour or "
            "4D volume): train on a scalar 3D volume (e.g. one frame or channel of it)"
        )
    volume_arrays(volume_node)  # refuses a missing volume, or one it cannot read as (K, J, I)
    if axis not in (0, 1, 2):
        raise InputError(f"slice axis must be 0, 1 or 2 (K, J, I), not {axis!r}")
    if getattr(segmentation_node, "GetSegmentation", None) is None:
        raise InputError("select a segmentation holding the annotated segments")
    segmentation = segmentation_node.GetSegmentation()
    ids = list(dict.fromkeys(segment_ids or []))
    if not ids:
        raise InputError(
            f"select at least one segment of {node_label(segmentation_node)} to train on"
        )
    masks, by_segment, names = {}, {}, {}
    for segment_id in ids:
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise InputError(f"segment {segment_id!r} is not in {node_label(segmentation_node)}")
        names[segment_id] = segment.GetName() or segment_id
        mask = segment_array(segmentation_node, segment_id, volume_node)
        _check_geometry(volume_node, segmentation_node, segment_id, names[segment_id], axis, mask)
        masks[segment_id] = mask
        other = tuple(a for a in range(3) if a != axis)
        by_segment[segment_id] = tuple(int(i) for i in np.flatnonzero(mask.any(axis=other)))
    return AnnotatedSlices(axis, by_segment, names), masks


def _check_geometry(volume_node, segmentation_node, segment_id, name, axis, mask) -> None:
    """A segment drawn on its own grid must land inside the volume, on slices parallel to its slices."""
    grid = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if grid is None or grid.IsEmpty():
        return  # nothing drawn, or a surface-only segment (no slices of its own)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    drawn = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, segment_id)
    if not (drawn == label).any():
        return
    where = f"segment '{name}' of {node_label(segmentation_node)}"
    if not mask.any():
        raise InputError(
            f"{where} lies outside volume {node_label(volume_node)}: the segmentation was drawn on "
            "another image; select the volume it was drawn on"
        )
    segment_matrix = vtk.vtkMatrix4x4()
    grid.GetImageToWorldMatrix(segment_matrix)
    plane = np.zeros([n for a, n in enumerate(mask.shape) if a != axis], np.uint8)
    volume_image = labelmap_oriented_image(volume_node, plane, axis, 0, segmentation_node)
    volume_matrix = vtk.vtkMatrix4x4()
    volume_image.GetImageToWorldMatrix(volume_matrix)
    normal = _plane_normals(slicer.util.arrayFromVTKMatrix(volume_matrix))[2 - axis]
    cosines = np.abs(_plane_normals(slicer.util.arrayFromVTKMatrix(segment_matrix)) @ normal)
    if cosines.max() < 1 - _ALIGNED:
        raise InputError(
            f"{where} is drawn on a grid that is not parallel to the {AXIS_NAMES[axis]} slices of "
            f"{node_label(volume_node)}: its slices would be cut obliquely; set the segmentation's "
            "geometry to the volume (Segment Editor, Specify geometry) or choose another slice axis"
        )


def _plane_normals(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Unit normal of the slices of each IJK axis (rows), from a 4x4 IJK-to-RAS matrix."""
    columns = ijk_to_ras[:3, :3].T
    normals = np.array([np.cross(columns[(k + 1) % 3], columns[(k + 2) % 3]) for k in range(3)])
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def slice_blocks(slices: Sequence[int]) -> dict[int, str]:
    """Slice index -> name of its block: the sorted slices cut into 2..5 contiguous runs of equal size.

    Why blocks: neighbouring slices of a volume are near copies of each other, so validating on a slice
    whose neighbours were trained on over-states the Dice and lets early stopping keep the wrong epoch.
    Each block acts as a "case" for :func:`minisam.training.splits.split_cases`, which holds one whole
    block back for validation (chosen with the seed) and trains on the others: neighbouring slices stay
    on the same side except where two blocks meet. Contiguous blocks rather than every k-th slice,
    because every-k-th validation would put each validation slice between two training slices. All
    annotated slices are used (few-shot data is precious), and the samples of all segments on one slice
    go to the same side.
    """
    order = sorted(set(int(s) for s in slices))
    count = min(MAX_BLOCKS, max(2, len(order) // 2), len(order))
    blocks = {}
    if not order:
        return blocks
    for chunk in np.array_split(np.asarray(order), count):
        for index in chunk:
            blocks[int(index)] = f"slices {int(chunk[0])}-{int(chunk[-1])}"
    return blocks


def suggested_modality(volumeNode) -> str:
    """The adapter family of the volume's DICOM modality when known, else "CT" or "MR" from its values."""
    family = family_for_dicom(dicom_modality(volumeNode))
    if family:
        return family
    preset = normalization_modality(volumeNode, AUTO)
    return family_of_preset(preset) or preset.upper()


# ------------------------------------------------------------------------------------------ training


@dataclass
class TrainingPlan:
    """Everything :meth:`MiniSAMTrainLogic.run` needs, read from MRML beforehand (no node inside)."""

    name: str
    family: str
    model: str
    quant: str
    qat: bool
    library_root: Path
    spec: object  # minisam.adapters.AdapterSpec
    settings: object  # minisam.training.adapter_trainer.AdapterTrainSettings
    train: list
    val: list
    summary: dict
    qat_epochs: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.settings.batch_size)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run (both stages for QAT) if it does not stop early."""
        return (self.settings.epochs + self.qat_epochs) * self.steps_per_epoch


@dataclass(frozen=True)
class TrainResult:
    """What a training did; ``path`` is the installed adapter (None when cancelled: nothing installed)."""

    name: str
    path: Path | None
    modality: str
    zero_shot_val_dice: float
    best_val_dice: float
    best_epoch: int
    trainable_params: int
    seconds: float
    cancelled: bool
    train_slices: int
    val_slices: int
    quant: str

    def describe(self) -> str:
        """One line for the panel and the log."""
        if self.cancelled:
            return (
                f"training of {self.name} cancelled after {self.seconds:.0f} s: nothing installed"
            )
        gain = (
            "no better than the base model (identity adapter kept)"
            if self.best_epoch < 0
            else f"best epoch {self.best_epoch}"
        )
        return (
            f"adapter {self.name} ({self.modality}, {self.trainable_params} parameters) installed: "
            f"validation Dice {self.zero_shot_val_dice:.3f} zero-shot -> {self.best_val_dice:.3f}, "
            f"{gain}, {self.seconds:.0f} s"
        )


class MiniSAMTrainLogic:
    """Annotated slices -> slice samples -> adapter -> adapter library. Holds no state between runs."""

    annotated_slices = staticmethod(annotated_slices)

    def prepare(
        self,
        volumeNode,
        segmentationNode,
        segmentIds: Sequence[str],
        modality: str,
        method: str = "lora",
        rank: int = 8,
        epochs: int = 20,
        quant: str = "nf4",
        qat: bool = False,
        library_root=None,
        model: str = "default",
        axis: int = 0,
        batch_size: int = 4,
        name: str | None = None,
        seed: int = 0,
    ) -> TrainingPlan:
        """Check the options, read the annotated slices and build the samples (call in the GUI thread).

        Arguments:
          modality: the adapter's modality (a DICOM Modality code or family: CT, MR, US, XRAY, ...); it
            also chooses the intensity normalisation, as MiniSAMSegment does at inference.
          method: "lora" or "adalora"; ``qat`` (AdaLoRA only) trains through quantized layers.
          quant: precision of the frozen base during training ("nf4", "int8", "fp32"); ignored by QAT.
          library_root: adapter library folder (default ``minisam.adapters.library.default_root()``).
          name: adapter name (default ``<family>_<volume name>``, numbered if taken).

        Raises:
          InputError: bad options, too few annotated slices, or an unusable volume / segmentation.
        """
        from minisam.adapters.library import default_root
        from minisam.adapters.lora import check_adapter_name
        from minisam.training.adapter_trainer import AdapterTrainSettings, adapter_spec

        family = family_for_dicom(modality)
        if family is None:
            raise InputError(
                f"modality {modality!r} is not known: name it like a DICOM Modality (CT, MR, US, XRAY, ...)"
            )
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        for label, value in (("rank", rank), ("epochs", epochs), ("batch size", batch_size)):
            if int(value) < 1:
                raise InputError(f"{label} must be >= 1, not {value}")
        if qat and method != "adalora":
            raise InputError("QAT trains an AdaLoRA adapter (AdaLoRA-QAT): choose AdaLoRA")
        found, masks = _read_segments(volumeNode, segmentationNode, segmentIds, axis)
        volume = node_label(volumeNode)
        require_enough(found, f"volume {volume}")
        root = Path(library_root).expanduser() if library_root is not None else default_root()
        if name:
            check_adapter_name(name)
            if (root / name).exists():
                raise InputError(
                    f"adapter {name!r} is already installed in {root}: choose another name"
                )
        else:
            name = _free_name(root, f"{family.lower()}_{volumeNode.GetName()}")
        norm = normalization_modality(volumeNode, preset_for_family(family) or AUTO)
        samples = _samples(
            volume_arrays(volumeNode).array, masks, found, norm, volumeNode.GetName()
        )
        train, val = split_cases(samples, None, VAL_FRACTION, seed)
        settings = AdapterTrainSettings(epochs=int(epochs), batch_size=int(batch_size), seed=seed)
        steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
        spec = adapter_spec(method, int(rank), steps)
        summary = {
            "source": f"3D Slicer: volume {volume}, segmentation {node_label(segmentationNode)}",
            "segments": list(found.names.values()),
            "slice_axis": AXIS_NAMES[axis],
            "annotated_slices": list(found.slices),
            "normalisation": norm,
            "validation_blocks": sorted({s.case for s in val}),
            "train_slices": len(train),
            "val_slices": len(val),
            "seed": seed,
        }
        return TrainingPlan(
            name, family, model, quant, bool(qat), root, spec, settings, train, val, summary,
            qat_epochs=max(1, settings.epochs // 2) if qat else 0,
        )  # fmt: skip

    def run(self, plan: TrainingPlan, progress: Progress | None = None) -> TrainResult:
        """Train, save and install the adapter of ``plan``; touches no MRML node (any thread).

        ``progress`` gets {"phase": ...} when the work changes phase and the trainer's step and
        validation dicts; returning False cancels (the trainer stops after the current step). A
        cancelled run installs nothing, so MiniSAMSegment keeps the adapter it had for the modality.
        """
        from minisam.adapters import AdapterLibrary, save_adapter
        from minisam.model_loader import load_model
        from minisam.training.adapter_trainer import train_adapter

        started = time.monotonic()

        def say(phase: str) -> bool:
            return progress is None or progress({"phase": phase}) is not False

        if not say("loading model"):
            return _cancelled(plan, started)
        loaded = load_model(plan.model)
        if not say("training"):
            return _cancelled(plan, started)
        if plan.qat:
            from minisam.training.qat import train_adapter_qat

            model, report, _ = train_adapter_qat(
                loaded, plan.train, plan.val, plan.spec, plan.family, plan.settings,
                qat_epochs=plan.qat_epochs, progress=progress, name=plan.name,
            )  # fmt: skip
        else:
            model, report = train_adapter(
                loaded,
                plan.train,
                plan.val,
                plan.spec,
                plan.settings,
                plan.quant,
                progress,
                plan.name,
            )
        if report.cancelled:
            return _cancelled(plan, started)
        say("installing")
        metadata = {
            "name": plan.name,
            "modality": plan.family,
            "base_hash": report.base_hash,
            "base_model": plan.model,
            "training_data": dict(plan.summary, epochs_run=len(report.history), quant=report.quant),
            "metrics": {
                "val_dice": round(report.best_val_dice, 4),
                "zero_shot_val_dice": round(report.zero_shot_val_dice, 4),
                "best_epoch": report.best_epoch,
                "history": report.history,
                **({"qat": report.extra} if plan.qat else {}),
            },
        }
        with tempfile.TemporaryDirectory(prefix="minisam-train-") as tmp:
            folder = save_adapter(model, plan.name, Path(tmp) / plan.name, metadata)
            info = AdapterLibrary(plan.library_root).install(folder)
        result = TrainResult(
            plan.name, info.path, plan.family, report.zero_shot_val_dice, report.best_val_dice,
            report.best_epoch, report.trainable_params, time.monotonic() - started, False,
            len(plan.train), len(plan.val), report.quant,
        )  # fmt: skip
        logging.info("MiniSAMTrain: %s", result.describe())
        return result

    def train(self, *args, progress: Progress | None = None, **options) -> TrainResult:
        """:meth:`prepare` with these arguments, then :meth:`run` with ``progress``, in this thread.

        For scripts and tests (``train(volume, segmentation, ids, "MR", epochs=2, progress=...)``);
        the panel runs the same two steps through a :class:`TrainingJob`.
        """
        return self.run(self.prepare(*args, **options), progress)


def _samples(volume: np.ndarray, masks: dict, found: AnnotatedSlices, norm: str, case: str) -> list:
    """One SliceSample per annotated (slice, segment); the slice's block is its case."""
    from minisam.training.slice_samples import SliceSample

    normalized = normalize_intensity(volume, norm)  # whole volume: one mapping for all slices
    blocks = slice_blocks(found.slices)
    samples = []
    for index in found.slices:
        rgb = to_rgb(np.take(normalized, index, axis=found.axis)).astype(np.uint8)
        for segment_id, indices in found.by_segment.items():
            if index in indices:
                mask = np.take(masks[segment_id], index, axis=found.axis) != 0
                samples.append(SliceSample(rgb, mask, f"{case} {blocks[index]}", norm, case))
    return samples


def _free_name(root: Path, wanted: str) -> str:
    """A valid adapter name from ``wanted``, numbered (_2, _3, ...) while the library has it already."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", wanted).strip("_-")[:60] or "adapter"
    name, number = base, 1
    while (root / name).exists():
        number += 1
        name = f"{base}_{number}"
    return name


def _cancelled(plan: TrainingPlan, started: float) -> TrainResult:
    nan = float("nan")
    return TrainResult(
        plan.name, None, plan.family, nan, nan, -1, 0, time.monotonic() - started, True,
        len(plan.train), len(plan.val), plan.quant,
    )  # fmt: skip


def ensure_training_packages(
    confirm: Callable[[str], bool], pip_install: Callable[[str], object]
) -> list[str]:
    """Install the packages training needs beyond MiniSAMSegment's (peft, ...) after one ``confirm``."""
    missing = [r for n, r in TRAINING_REQUIREMENTS.items() if importlib.util.find_spec(n) is None]
    if missing and not confirm(
        f"Adapter training needs these Python packages: {', '.join(missing)}. Install now?"
    ):
        raise InputError("adapter training cannot run until its Python packages are installed")
    for requirement in missing:
        install_requirement(requirement, pip_install)
    importlib.invalidate_caches()
    return missing


# ---------------------------------------------------------------------------------------------- job


@dataclass(frozen=True)
class JobState:
    """A snapshot of a :class:`TrainingJob` for the panel."""

    phase: str = "waiting"
    fraction: float = 0.0
    epoch: int = 0
    stage: int = 1
    loss: float = float("nan")
    val_dice: float = float("nan")
    done: bool = False


class TrainingJob:
    """:meth:`MiniSAMTrainLogic.run` on a worker thread, with progress, cancel and the outcome.

    The constructor calls :meth:`MiniSAMTrainLogic.prepare` in the calling thread (MRML is not
    thread-safe), so bad input raises here, before any thread starts. The worker then only trains,
    writes files and installs; :meth:`cancel` makes its progress callback return False. Poll
    :attr:`state` (or drain :meth:`events`) from the GUI thread; when :attr:`done`, read
    :attr:`result` or :attr:`error`.
    """

    def __init__(self, logic: MiniSAMTrainLogic, *args, **kwargs) -> None:
        self.plan = logic.prepare(*args, **kwargs)
        self.result: TrainResult | None = None
        self.error: BaseException | None = None
        self._logic = logic
        self._cancel = threading.Event()
        self._events: queue.Queue[dict] = queue.Queue()
        self._lock = threading.Lock()
        self._state = JobState()
        self._thread = threading.Thread(target=self._work, name="MiniSAMTrain", daemon=True)

    def start(self) -> TrainingJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the worker to stop after its current step (nothing is installed then)."""
        self._cancel.set()

    @property
    def cancelling(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker; True when it has ended (always True if it never started)."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.state.done

    @property
    def state(self) -> JobState:
        with self._lock:
            return self._state

    def events(self) -> list[dict]:
        """The progress dicts that arrived since the last call, oldest first."""
        items = []
        while True:
            try:
                items.append(self._events.get_nowait())
            except queue.Empty:
                return items

    def _progress(self, info: dict) -> bool:
        self._events.put(dict(info))
        with self._lock:
            self._state = _advance(self._state, info, self.plan)
        return not self._cancel.is_set()

    def _work(self) -> None:
        try:
            self.result = self._logic.run(self.plan, self._progress)
        except MiniSAMError as exc:  # handed to the GUI thread, which shows it
            self.error = exc
        except BaseException as exc:
            logging.exception("MiniSAMTrain: training failed")
            self.error = _one_line(exc)
        finally:
            cancelled = self.result is not None and self.result.cancelled
            self._progress(
                {"phase": "failed" if self.error else "cancelled" if cancelled else "finished"}
            )
            with self._lock:
                self._state = replace(self._state, done=True)


def _advance(state: JobState, info: dict, plan: TrainingPlan) -> JobState:
    """The state after one progress dict (phase, step or validation)."""
    if "phase" in info:
        finished = info["phase"] == "finished"
        return replace(state, phase=info["phase"], fraction=1.0 if finished else state.fraction)
    stage = int(info.get("stage", 1))
    if "validation" in info:
        return replace(state, stage=stage, val_dice=float(info["validation"]["val_dice"]))
    epochs_before = info["epoch"] + (plan.settings.epochs if stage == 2 else 0)
    done = epochs_before * info["steps"] + info["step"] + 1
    fraction = min(1.0, done / max(1, plan.total_steps))
    return replace(
        state, stage=stage, epoch=int(info["epoch"]), loss=float(info["loss"]), fraction=fraction
    )


def _one_line(exc: BaseException) -> MiniSAMError:
    text = str(exc).strip().splitlines()
    return MiniSAMError(
        f"training failed: {text[0] if text else type(exc).__name__} (details in the log)"
    )
