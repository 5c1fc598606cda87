"""Train a modality adapter on the slices a user annotated in Slicer, and install it. MRML level, no Qt.

Flow: :func:`annotated_slices` finds the slices of a volume that carry a drawn segment;
:meth:`MiniSAMTrainLogic.prepare` (MRML reads, so in the GUI thread) checks the options and cuts the
annotated slices, normalised as MiniSAMSegment normalises the volume, into contiguous blocks (the cases of
the training / validation split); :meth:`MiniSAMTrainLogic.start` hands that plan to a
:class:`~MiniSAMTrainLib.training_process.TrainingProcess`, which trains the adapter in a separate
``minisam train-adapter`` process (full speed: Slicer's main thread keeps the GIL, so a thread would crawl)
and installs it into the adapter library, where MiniSAMSegment picks it up by modality. The module's panel
polls the process with a QTimer.

Importing this module needs numpy and slicer only; torch and peft are needed by the training process (and
by the adapter check when the result is installed), so the panel loads before they are installed.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from MiniSAMSegmentLib.dependencies import INSTALLING, install_requirement
from MiniSAMSegmentLib.segment_io import labelmap_oriented_image, segment_array
from MiniSAMSegmentLib.volume_node import (
    dicom_modality,
    node_label,
    normalization_modality,
    volume_arrays,
)

from minisam.errors import InputError
from minisam.geometry import VoxelGrid, grid_mismatch
from minisam.intensity import normalize_intensity
from minisam.modality import (
    AUTO,
    FAMILIES,
    family_for_dicom,
    family_of_preset,
    preset_for_family,
)

from .training_process import JobState, TrainingProcess, TrainResult

__all__ = [
    "AXIS_NAMES",
    "COMMON_FAMILIES",
    "METHODS",
    "MIN_ANNOTATED_SLICES",
    "AnnotatedSlices",
    "JobState",
    "MiniSAMTrainLogic",
    "SliceBlock",
    "TrainResult",
    "TrainingPlan",
    "TrainingProcess",
    "annotated_slices",
    "ensure_training_packages",
    "read_annotations",
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


# ------------------------------------------------------------------------------------ annotated slices


@dataclass(frozen=True)
class AnnotatedSlices:
    """Where segments are drawn: for each segment ID, the slice indices along ``axis`` with foreground.

    Each (slice, segment) pair is one training sample; slices where a segment is not drawn are
    unlabelled (the user did not annotate them), never negatives. ``resampled``: segment ID -> how its
    grid differs from the volume's (``minisam.geometry.grid_mismatch``), for the segments that were
    resampled onto the volume's voxels.
    """

    axis: int
    by_segment: dict[str, tuple[int, ...]]
    names: dict[str, str] = field(default_factory=dict)
    resampled: dict[str, str] = field(default_factory=dict)

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
        """One line for the panel, e.g. '8 annotated K slices (9 samples: edema 8, core 1)', saying
        which segments were resampled onto the volume's grid and why."""
        parts = ", ".join(f"{self.names.get(s, s)} {len(i)}" for s, i in self.by_segment.items())
        plural = "" if len(self) == 1 else "s"
        text = f"{len(self)} annotated {AXIS_NAMES[self.axis]} slice{plural} ({self.samples} samples: {parts})"
        if self.resampled:
            moved = ", ".join(f"'{self.names.get(s, s)}'" for s in self.resampled)
            reason = next(iter(self.resampled.values()))
            text += f"; {moved} resampled onto the volume's voxels (grid {reason})"
        return text


def annotated_slices(volumeNode, segmentationNode, segmentIds: Sequence[str], axis: int = 0):
    """The slices of ``volumeNode`` along numpy ``axis`` on which each segment is drawn.

    Label grid rule: a segment whose voxel grid is the volume's (spacing, origin and direction within
    ``minisam.geometry.GRID_TOLERANCE``, compared by ``grid_mismatch`` as ``train-adapter`` does) is
    taken voxel for voxel; one on another grid (oversampled, drawn on another series, moved) is
    resampled nearest-neighbour onto the volume by physical position, where Slicer shows it, and listed
    in ``resampled`` with the difference (the panel and the adapter's source info say so). Oblique
    slices and drawings outside the volume are refused. The user's segmentation is only read.

    Raises:
      InputError: no volume, a 4D or vector volume, no segmentation or segment, a segment drawn
        outside the volume, or drawn on slices that are not parallel to the volume's ``axis`` slices.
    """
    return _read_segments(volumeNode, segmentationNode, segmentIds, axis)[0]


def read_annotations(volumeNode, segmentationNode, segmentIds: Sequence[str], axis: int = 0):
    """(:func:`annotated_slices`, {segment ID: (K, J, I) uint8 mask on the volume's grid})."""
    return _read_segments(volumeNode, segmentationNode, segmentIds, axis)


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
    masks, by_segment, names, resampled = {}, {}, {}, {}
    for segment_id in ids:
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise InputError(f"segment {segment_id!r} is not in {node_label(segmentation_node)}")
        names[segment_id] = segment.GetName() or segment_id
        mask = segment_array(segmentation_node, segment_id, volume_node)
        mismatch = _check_geometry(
            volume_node, segmentation_node, segment_id, names[segment_id], axis, mask
        )
        if mismatch is not None:
            resampled[segment_id] = mismatch
        masks[segment_id] = mask
        other = tuple(a for a in range(3) if a != axis)
        by_segment[segment_id] = tuple(int(i) for i in np.flatnonzero(mask.any(axis=other)))
    return AnnotatedSlices(axis, by_segment, names, resampled), masks


def _check_geometry(volume_node, segmentation_node, segment_id, name, axis, mask) -> str | None:
    """A segment drawn on its own grid must land inside the volume, on slices parallel to its slices.

    Returns:
      how the segment's grid differs from the volume's (it was resampled), or None when it lies on it.
    """
    grid = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if grid is None or grid.IsEmpty():
        return None  # nothing drawn, or a surface-only segment (no slices of its own)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    drawn = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, segment_id)
    if not (drawn == label).any():
        return None
    where = f"segment '{name}' of {node_label(segmentation_node)}"
    if not mask.any():
        raise InputError(
            f"{where} lies outside volume {node_label(volume_node)}: the segmentation was drawn on "
            "another image; select the volume it was drawn on"
        )
    matrix = vtk.vtkMatrix4x4()
    grid.GetImageToWorldMatrix(matrix)
    segment_matrix = slicer.util.arrayFromVTKMatrix(matrix)
    plane = np.zeros([n for a, n in enumerate(mask.shape) if a != axis], np.uint8)
    volume_image = labelmap_oriented_image(volume_node, plane, axis, 0, segmentation_node)
    # the volume's grid in the segmentation's coordinates (their parent transforms)
    volume_image.GetImageToWorldMatrix(matrix)
    volume_matrix = slicer.util.arrayFromVTKMatrix(matrix)
    normal = _plane_normals(volume_matrix)[2 - axis]
    cosines = np.abs(_plane_normals(segment_matrix) @ normal)
    if cosines.max() < 1 - _ALIGNED:
        raise InputError(
            f"{where} is drawn on a grid that is not parallel to the {AXIS_NAMES[axis]} slices of "
            f"{node_label(volume_node)}: its slices would be cut obliquely; set the segmentation's "
            "geometry to the volume (Segment Editor, Specify geometry) or choose another slice axis"
        )
    return _lattice_mismatch(volume_matrix, segment_matrix, grid.GetExtent())


def _lattice_mismatch(volume_matrix: np.ndarray, segment_matrix: np.ndarray, extent) -> str | None:
    """How the segment's voxel grid differs from the volume's (:func:`grid_mismatch`), or None.

    A segment's labelmap covers only the drawn part of its grid (``extent``), so the grids are
    compared there: the segment's first voxel against the volume voxel nearest to it, with the
    segment's size; None means every segment voxel is a volume voxel.
    """
    start = np.array([extent[0], extent[2], extent[4], 1.0])
    size = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3))
    first = segment_matrix @ start
    nearest = np.round(np.linalg.inv(volume_matrix) @ first)
    segment, volume = segment_matrix.copy(), volume_matrix.copy()
    segment[:3, 3] = first[:3]
    volume[:3, 3] = (volume_matrix @ nearest)[:3]
    return grid_mismatch(VoxelGrid.from_matrix(volume, size), VoxelGrid.from_matrix(segment, size))


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


@dataclass(frozen=True)
class SliceBlock:
    """Contiguous annotated slices: ``image`` (n, H, W) uint8, normalised over the whole volume, and per
    segment ID an (n, H, W) mask (empty on the block's slices where that segment is not drawn)."""

    name: str
    slices: tuple[int, ...]
    image: np.ndarray
    masks: dict[str, np.ndarray]


@dataclass
class TrainingPlan:
    """Everything a training process needs, read from MRML beforehand (no node inside)."""

    name: str
    family: str
    model: str
    quant: str
    method: str
    rank: int
    qat: bool
    epochs: int
    batch_size: int
    seed: int
    library_root: Path
    blocks: list[SliceBlock]
    summary: dict

    @property
    def samples(self) -> int:
        """(slice, segment) pairs with a drawing."""
        return sum(
            int(mask[i].any())
            for block in self.blocks
            for mask in block.masks.values()
            for i in range(len(block.slices))
        )

    def command_arguments(self, manifest: Path, out: Path, source_info: Path) -> list[str]:
        """The ``minisam train-adapter`` arguments of this plan (see TrainingProcess.command)."""
        method = "adalora-qat" if self.qat else self.method
        arguments = [
            "--manifest", str(manifest), "--val-fraction", str(VAL_FRACTION),
            "--modality", self.family, "--model", self.model, "--method", method,
            "--rank", str(self.rank), "--epochs", str(self.epochs),
            "--batch-size", str(self.batch_size), "--seed", str(self.seed),
            "--name", self.name, "--out", str(out), "--source-info", str(source_info),
            "--progress-json", "--quiet",
        ]  # fmt: skip
        return arguments if self.qat else [*arguments, "--quant", self.quant]


class MiniSAMTrainLogic:
    """Annotated slices -> training plan -> training process -> adapter library; and the slices to
    annotate next (:meth:`suggest`, which keeps its model loaded between calls)."""

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
        quant: str = "auto",
        qat: bool = False,
        library_root=None,
        model: str = "default",
        axis: int = 0,
        batch_size: int = 4,
        name: str | None = None,
        seed: int = 0,
    ) -> TrainingPlan:
        """Check the options, read the annotated slices and cut them into blocks (in the GUI thread).

        Arguments:
          modality: the adapter's modality (a DICOM Modality code or family: CT, MR, US, XRAY, ...); it
            also chooses the intensity normalisation, as MiniSAMSegment does at inference.
          method: "lora" or "adalora"; ``qat`` (AdaLoRA only) trains through quantized layers.
          quant: precision of the frozen base during training ("auto": by the encoder family, see
            minisam.training.adapter_recipe; "nf4", "int8", "fp32"); ignored by QAT.
          library_root: adapter library folder (default ``minisam.adapters.library.default_root()``).
          name: adapter name (default ``<family>_<volume name>``, numbered if taken).

        Raises:
          InputError: bad options, too few annotated slices, or an unusable volume / segmentation.
        """
        from minisam.adapters.library import default_root
        from minisam.adapters.lora import check_adapter_name

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
        blocks = _blocks(volume_arrays(volumeNode).array, masks, found, norm)
        summary = {
            "source": f"3D Slicer: volume {volume}, segmentation {node_label(segmentationNode)}",
            "segments": list(found.names.values()),
            "slice_axis": AXIS_NAMES[axis],
            "annotated_slices": list(found.slices),
            "blocks": [block.name for block in blocks],
            "normalisation": norm,
            "resampled": {found.names[s]: reason for s, reason in found.resampled.items()},
        }
        return TrainingPlan(
            name, family, model, quant, method, int(rank), bool(qat), int(epochs), int(batch_size),
            int(seed), root, blocks, summary,
        )  # fmt: skip

    def suggest(
        self,
        volumeNode,
        segmentationNode,
        segmentIds: Sequence[str],
        axis: int = 0,
        model: str = "default",
        modality: str | None = None,
        count: int = 8,
        pump=None,
        **options,
    ):
        """The slices to annotate next, least confident first (see :mod:`.suggestions`; ``options``:
        its ``margin`` and ``limit``).

        The model is ``model`` with the library's adapter for ``modality`` (else the volume's DICOM
        modality), as the MiniSAM effect would segment; the model stays loaded for the next call. The
        volume's session (normalised copy, embeddings) goes when the volume is removed or the scene
        closed; :meth:`release` (module cleanup) drops everything, the model too.
        """
        from .suggestions import suggest_slices

        found, masks = _read_segments(volumeNode, segmentationNode, segmentIds, axis)
        logic = self._segment_logic(model, volumeNode.GetScene())
        family = family_for_dicom(modality) if modality else None
        logic.modality = (preset_for_family(family) if family else None) or AUTO
        return suggest_slices(logic, volumeNode, found, masks, count=count, pump=pump, **options)

    def _segment_logic(self, model: str, scene=None):
        from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic

        logic = getattr(self, "_suggestion_logic", None)
        if logic is None:
            logic = self._suggestion_logic = MiniSAMSegmentLogic(model)
        if scene is not None:
            logic.observe_scene(scene)  # node removal and scene close release its sessions
        logic.model_spec = model
        return logic

    def release(self) -> None:
        """Drop what :meth:`suggest` holds: sessions, embeddings, the model (the module's cleanup)."""
        logic = getattr(self, "_suggestion_logic", None)
        if logic is not None:
            logic.release()
            self._suggestion_logic = None

    def start(self, plan: TrainingPlan, python: str | None = None) -> TrainingProcess:
        """Start training ``plan`` in a separate process (returns at once; poll or wait on it)."""
        return TrainingProcess(plan, python).start()

    def train(self, *args, python: str | None = None, **options) -> TrainResult:
        """:meth:`prepare` with these arguments, then train and install, waiting for the end.

        For scripts and tests (``train(volume, segmentation, ids, "MR", epochs=2)``); the panel
        starts the process with :meth:`start` and polls it instead.

        Raises:
          InputError: what :meth:`prepare` refuses; MiniSAMError: the training failed (one line).
        """
        process = self.start(self.prepare(*args, **options), python)
        process.wait()
        if process.error is not None:
            raise process.error
        return process.result


def _blocks(volume: np.ndarray, masks: dict, found: AnnotatedSlices, norm: str) -> list[SliceBlock]:
    """The annotated slices in blocks (see :func:`slice_blocks`), with one mask stack per segment."""
    normalized = normalize_intensity(volume, norm)  # whole volume: one mapping for all slices
    by_block: dict[str, list[int]] = {}
    for index, block in slice_blocks(found.slices).items():
        by_block.setdefault(block, []).append(index)
    blocks = []
    for block, indices in by_block.items():
        image = np.take(normalized, indices, axis=found.axis)
        image = np.moveaxis(image, found.axis, 0).astype(np.uint8)
        stacks = {}
        for segment_id, drawn in found.by_segment.items():
            if set(drawn) & set(indices):
                mask = np.moveaxis(
                    np.take(masks[segment_id], indices, axis=found.axis), found.axis, 0
                )
                stacks[segment_id] = (mask != 0).astype(np.uint8)
        blocks.append(SliceBlock(block, tuple(indices), np.ascontiguousarray(image), stacks))
    return blocks


def _free_name(root: Path, wanted: str) -> str:
    """A valid adapter name from ``wanted``, numbered (_2, _3, ...) while the library has it already."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", wanted).strip("_-")[:60] or "adapter"
    name, number = base, 1
    while (root / name).exists():
        number += 1
        name = f"{base}_{number}"
    return name


def ensure_training_packages(
    confirm: Callable[[str], bool], pip_install: Callable[[str], object]
) -> list[str]:
    """Install the packages training needs beyond MiniSAMSegment's (peft, ...) after one ``confirm``."""
    missing = [r for n, r in TRAINING_REQUIREMENTS.items() if importlib.util.find_spec(n) is None]
    if not missing:
        return []
    with INSTALLING("installing Python packages"):
        if not confirm(
            f"Adapter training needs these Python packages: {', '.join(missing)}. Install now?"
        ):
            raise InputError("adapter training cannot run until its Python packages are installed")
        for requirement in missing:
            install_requirement(requirement, pip_install)
    importlib.invalidate_caches()
    return missing
