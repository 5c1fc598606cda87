"""Promptable segmentation of an image or a volume, slice by slice, with cached embeddings and propagation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from minisam.embedding_cache import EmbeddingCache
from minisam.engine import Prediction, SamEngine, SliceEmbedding
from minisam.errors import PromptError
from minisam.intensity import to_rgb
from minisam.precompute import Precompute
from minisam.prompts import Prompt
from minisam.propagation import PropagationSettings, next_prompt, stop_reason

ProgressCallback = Callable[[int, int], bool | None]  # (done, total) -> False to cancel
Pump = Callable[[], object]  # what a waiting GUI thread does meanwhile (process events)
DEFAULT_NEIGHBOURS = 2  # slices embedded ahead on each side of the focus slice
DEFAULT_AHEAD = 4  # slices a propagation keeps queued ahead of its decoder


@dataclass
class SliceResult:
    index: int
    mask: np.ndarray
    score: float
    prompted: bool


@dataclass
class VolumeResult:
    """Masks per slice along one axis and a label volume assembled from them."""

    labels: np.ndarray  # same spatial shape as the input; uint8 0/1
    slices: dict[int, SliceResult] = field(default_factory=dict)
    stop_reasons: list[str] = field(default_factory=list)
    cancelled: bool = False


class VolumeSession:
    """One normalised image (H, W[, 3]) or volume (Z, Y, X) in 0..255, ready for prompts.

    Embeddings are cached per (key, axis, slice) in ``cache`` (shared between sessions if given), so going
    back to a slice or clicking again is only a decoder pass.

    With ``background``, a :class:`~minisam.precompute.Precompute` worker embeds ahead of time: the slice
    given to :meth:`focus` and ``neighbours`` slices on each side of it, and the next ``ahead`` slices of a
    propagation; :meth:`embedding` then waits for (never repeats) an embedding in flight. :meth:`close`
    stops the worker (call it when the session is dropped).
    """

    def __init__(
        self,
        engine: SamEngine,
        array: np.ndarray,
        cache: EmbeddingCache | None = None,
        key: object = None,
        is_rgb: bool = False,
        background: bool = False,
        neighbours: int = DEFAULT_NEIGHBOURS,
        ahead: int = DEFAULT_AHEAD,
    ) -> None:
        if is_rgb and array.ndim == 3 and array.shape[-1] == 3:
            array = array[None]  # a colour 2D image is a single-slice volume with a channel axis
        elif array.ndim == 2:
            array = array[None]
        self.engine = engine
        self.volume = array
        self.is_rgb = is_rgb
        self.cache = cache if cache is not None else EmbeddingCache()
        self.key = key if key is not None else id(self)
        self.neighbours = neighbours
        self.ahead = ahead
        self.precompute: Precompute | None = None
        if background:
            self.precompute = Precompute(
                self._encode, self.cache, max_planned=max(2 * neighbours + 1, ahead + 1)
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.volume.shape[:3])

    def slice_count(self, axis: int) -> int:
        return self.spatial_shape[self._check_axis(axis)]

    def slice_shape(self, axis: int) -> tuple[int, int]:
        shape = list(self.spatial_shape)
        shape.pop(self._check_axis(axis))
        return shape[0], shape[1]

    def slice_image(self, axis: int, index: int) -> np.ndarray:
        """The (H, W, 3) 0..255 image of slice ``index`` along array ``axis``."""
        self._check_index(axis, index)
        return to_rgb(np.take(self.volume, index, axis=axis))

    def embedding(self, axis: int, index: int, pump: Pump | None = None) -> SliceEmbedding:
        """The slice's embedding: cached, awaited from the background worker, or computed now.

        ``pump``: called while this thread waits for the worker (background sessions only).
        """
        self._check_index(axis, index)
        key = (self.key, axis, index)
        if self.precompute is not None:
            return self.precompute.get(key, pump)
        return self.cache.get_or_compute(key, lambda: self._encode(key))

    def _encode(self, key: tuple) -> SliceEmbedding:
        _, axis, index = key
        return self.engine.embed(self.slice_image(axis, index))

    def focus(self, axis: int, index: int) -> None:
        """The user works on slice ``index`` now: embed it and its neighbours in the background, nearest
        first, instead of what was queued (nothing without ``background``; never blocks)."""
        if self.precompute is None:
            return
        self._check_index(axis, index)
        count = self.slice_count(axis)
        order = [index] + [
            i
            for distance in range(1, self.neighbours + 1)
            for i in (index + distance, index - distance)
            if 0 <= i < count
        ]
        self.precompute.plan([(self.key, axis, i) for i in order], pin=(self.key, axis, index))

    def close(self) -> None:
        """Stop the background worker: queued slices are dropped, the one in flight is discarded."""
        if self.precompute is not None:
            self.precompute.close()

    def predict(
        self,
        axis: int,
        index: int,
        prompt: Prompt,
        multimask: bool | None = None,
        pump: Pump | None = None,
    ) -> Prediction:
        """Masks for ``prompt`` on one slice (prompt coordinates: x = last remaining axis, y = the other)."""
        self._check_index(axis, index)
        prompt.validate(self.slice_shape(axis), where=f"slice {index} along axis {axis}")
        return self.engine.predict(self.embedding(axis, index, pump), prompt, multimask=multimask)

    def segment(
        self,
        axis: int,
        prompts: dict[int, Prompt],
        propagate: bool = False,
        settings: PropagationSettings | None = None,
        multimask: bool | None = None,
        progress: ProgressCallback | None = None,
        pump: Pump | None = None,
    ) -> VolumeResult:
        """Segment the prompted slices and, with ``propagate``, their neighbours in both directions.

        Propagation from a prompted slice stops at a stop criterion (see PropagationSettings), at the
        volume's end, or where another prompted slice takes over. In a background session the worker
        embeds the next ``ahead`` slices while the decoder works on this one; ``pump`` is called while
        waiting for an embedding.
        """
        settings = settings or PropagationSettings()
        if not prompts:
            raise PromptError("no prompted slice given")
        for index, prompt in prompts.items():
            self._check_index(axis, index)
            prompt.validate(self.slice_shape(axis), where=f"slice {index} along axis {axis}")
        result = VolumeResult(labels=np.zeros(self.spatial_shape, dtype=np.uint8))
        seeds = {
            i: self.predict(axis, i, p, multimask=multimask, pump=pump)
            for i, p in sorted(prompts.items())
        }
        for index, prediction in seeds.items():
            result.slices[index] = SliceResult(index, prediction.mask, prediction.score, True)
        if propagate:
            total = self.slice_count(axis)
            done = [len(seeds)]

            def tick() -> bool:
                done[0] += 1
                return progress is None or progress(min(done[0], total), total) is not False

            for index, prediction in seeds.items():
                for step in (1, -1):
                    reason = self._propagate(
                        axis, index, prediction, step, set(seeds), settings, result, tick, pump
                    )
                    result.stop_reasons.append(
                        f"from slice {index} going {'+' if step > 0 else '-'}: {reason}"
                    )
                    if reason == "cancelled":
                        result.cancelled = True
                        break
                if result.cancelled:
                    break
        for index, item in result.slices.items():
            view = np.moveaxis(result.labels, axis, 0)
            view[index][item.mask] = 1
        return result

    def _propagate(
        self,
        axis: int,
        start: int,
        seed: Prediction,
        step: int,
        prompted: set[int],
        settings: PropagationSettings,
        result: VolumeResult,
        tick: Callable[[], bool],
        pump: Pump | None = None,
    ) -> str:
        try:
            return self._propagate_steps(
                axis, start, seed, step, prompted, settings, result, tick, pump
            )
        finally:
            if self.precompute is not None:
                self.precompute.cancel()  # the slices queued past where it stopped

    def _propagate_steps(
        self, axis, start, seed, step, prompted, settings, result, tick, pump
    ) -> str:  # fmt: skip
        mask, logits, count = seed.mask, seed.low_res_logits[0], 0
        index = start + step
        while 0 <= index < self.slice_count(axis):
            if index in prompted:
                return f"reached prompted slice {index}"
            if settings.max_slices is not None and count >= settings.max_slices:
                return f"max_slices {settings.max_slices} reached"
            prompt = next_prompt(mask, logits, settings)
            if prompt is None:
                return "mask vanished"
            self._embed_ahead(axis, index, step, prompted, settings.max_slices, count)
            prediction = self.engine.predict(self.embedding(axis, index, pump), prompt)
            reason = stop_reason(prediction.mask, prediction.score, int(mask.sum()), settings)
            if reason is not None:
                return f"{reason} at slice {index}"
            existing = result.slices.get(index)
            if existing is None or existing.score < prediction.score:
                result.slices[index] = SliceResult(index, prediction.mask, prediction.score, False)
            mask, logits, count = prediction.mask, prediction.low_res_logits[0], count + 1
            if not tick():
                return "cancelled"
            index += step
        return "reached the end of the volume"

    def _embed_ahead(
        self, axis: int, index: int, step: int, prompted: set[int], cap: int | None, done: int
    ) -> None:
        """Queue this slice and the next ``ahead`` ones of the propagation (short of a prompted slice,
        the volume's end and ``max_slices``) for the background worker."""
        if self.precompute is None:
            return
        keys = []
        for offset in range(self.ahead + 1):
            i = index + offset * step
            if not 0 <= i < self.slice_count(axis) or i in prompted:
                break
            if cap is not None and done + offset >= cap:
                break
            keys.append((self.key, axis, i))
        self.precompute.plan(keys)

    def _check_axis(self, axis: int) -> int:
        if axis not in (0, 1, 2) or (self.volume.shape[0] == 1 and axis != 0):
            raise PromptError(
                f"--axis {axis} is not valid for an array of shape {self.spatial_shape}"
            )
        return axis

    def _check_index(self, axis: int, index: int) -> None:
        count = self.slice_count(axis)
        if not 0 <= index < count:
            raise PromptError(
                f"--slice {index} is out of range: axis {axis} has slices 0..{count - 1}"
            )
