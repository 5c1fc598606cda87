"""MiniSAMSegment's logic: volume node -> cached SAM session -> masks -> segments. MRML level, no Qt.

The Segment Editor effect, the module's self-test and the headless batch script all go through
:class:`MiniSAMSegmentLogic`; the geometry and segment helpers it builds on are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minisam.checkpoints import LoadedModel
from minisam.embedding_cache import DEFAULT_BUDGET_BYTES, EmbeddingCache
from minisam.engine import SamEngine
from minisam.errors import ModelError
from minisam.intensity import normalize_intensity
from minisam.model_loader import load_model
from minisam.prompts import Prompt
from minisam.propagation import PropagationSettings
from minisam.volume_session import ProgressCallback, VolumeResult, VolumeSession

from .dependencies import resolve_device
from .segment_io import (
    labelmap_oriented_image,
    replace_modifiers,
    segment_array,
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
    "MiniSAMSegmentLogic",
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


class MiniSAMSegmentLogic:
    """Holds the model (loaded on first use, one per model spec), an embedding cache shared by all volumes,
    and one :class:`VolumeSession` per volume node.

    A session is keyed by the node ID, the modification time of its image data and the intensity modality,
    so editing the voxels or changing the modality re-normalises the volume and recomputes embeddings.
    """

    def __init__(
        self,
        model_spec: str = "default",
        device: str = "auto",
        modality: str = "auto",
        cache_bytes: int = DEFAULT_BUDGET_BYTES,
        loader: Callable[[str], LoadedModel] = load_model,
    ) -> None:
        self.model_spec = model_spec
        self.device = device
        self.modality = modality
        self.cache = EmbeddingCache(cache_bytes)
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._engines: dict[tuple[str, str], SamEngine] = {}
        self._sessions: dict[str, tuple[tuple, VolumeSession]] = {}

    # -- model -------------------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        """The model named by ``model_spec`` (loaded once; later calls reuse it)."""
        if self.model_spec not in self._models:
            self._models[self.model_spec] = self._loader(self.model_spec)
        return self._models[self.model_spec]

    @property
    def engine(self) -> SamEngine:
        device = resolve_device(self.device)
        key = (self.model_spec, device)
        if key not in self._engines:
            loaded = self.model
            try:
                self._engines[key] = SamEngine(loaded.sam, loaded.config, device=device)
            except (RuntimeError, AssertionError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ModelError(f"device {device} is not usable here ({reason})") from None
        return self._engines[key]

    # -- sessions ----------------------------------------------------------------------------------------

    def session(self, volume_node) -> VolumeSession:
        """The cached session of ``volume_node``, rebuilt when its voxels, the modality or the model changed."""
        modality = normalization_modality(volume_node, self.modality)
        engine = self.engine
        key = (
            volume_node.GetID(),
            volume_node.GetImageData().GetMTime(),
            modality,
            self.model_spec,
            str(engine.device),
        )
        cached = self._sessions.get(volume_node.GetID())
        if cached is not None and cached[0] == key:
            return cached[1]
        normalized = normalize_intensity(volume_arrays(volume_node).array, modality)
        session = VolumeSession(engine, normalized, cache=self.cache, key=key)
        self._sessions[volume_node.GetID()] = (key, session)
        return session

    def forget(self, volume_node=None) -> None:
        """Drop the session of one volume node (all when None) and the cached embeddings."""
        if volume_node is None:
            self._sessions.clear()
        else:
            self._sessions.pop(volume_node.GetID(), None)
        self.cache.clear()

    # -- segmentation ------------------------------------------------------------------------------------

    def predict_on_slice(
        self, volume_node, axis: int, index: int, prompt: Prompt, multimask: bool = False
    ) -> tuple[np.ndarray, float]:
        """(mask (H, W) bool, predicted IoU) for ``prompt`` on slice ``index`` along numpy ``axis``."""
        prediction = self.session(volume_node).predict(axis, index, prompt, multimask=multimask)
        return prediction.mask, prediction.score

    def segment(
        self,
        volume_node,
        axis: int,
        prompts: dict[int, Prompt],
        propagate: bool = False,
        settings: PropagationSettings | None = None,
        progress: ProgressCallback | None = None,
    ) -> VolumeResult:
        """Masks on the prompted slices and, with ``propagate``, their neighbours; labels on the volume's grid."""
        return self.session(volume_node).segment(
            axis, prompts, propagate=propagate, settings=settings, progress=progress
        )

    def propagate(
        self,
        volume_node,
        axis: int,
        prompts: dict[int, Prompt],
        settings: PropagationSettings | None = None,
        progress: ProgressCallback | None = None,
    ) -> VolumeResult:
        """:meth:`segment` with propagation; ``progress(done, total)`` returning False cancels."""
        return self.segment(volume_node, axis, prompts, True, settings, progress)

    # Segment writes are module functions; exposed here so callers need only the logic object.
    write_mask_to_segment = staticmethod(write_mask_to_segment)
    labelmap_oriented_image = staticmethod(labelmap_oriented_image)
    replace_modifiers = staticmethod(replace_modifiers)
