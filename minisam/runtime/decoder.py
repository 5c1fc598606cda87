"""The mask decoder as ``SamEngine`` calls it: torch's module, or an export run by OpenVINO / ONNX Runtime.

A click costs the prompt encoder (microseconds) and the mask decoder (tens of milliseconds: a two-way
transformer over the 64 × 64 embedding and the mask upscaling). The decoder follows the image encoder's
runtime: when the encoder runs exported, so does the decoder; with ``--precision auto`` OpenVINO runs it
in bf16 (masks within Dice 0.998 of torch's on average, the encoder stays f32). Unlike the encoder's,
the decoder's export is made with the adapter that is active (decoder adapters are what the default's
modality adapters train), one export per adapter state, cached on disk by the hash of what the decoder
computes (:func:`minisam.runtime.adapter_state.export_hash`) and kept loaded for the last few states.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from minisam.errors import MiniSAMError
from minisam.runtime.adapter_state import adapter_signature
from minisam.runtime.backends import Runner, fallback_note, load_export
from minisam.runtime.choice import check_precision, part_precision
from minisam.runtime.compiled import CompiledEncoder
from minisam.runtime.onnx_export import ExportSpec

LOADED_STATES = (
    4  # adapter states kept compiled at once (an AdapterSwitcher may alternate per image)
)


class DecoderGraph(torch.nn.Module):
    """SAM's mask decoder with the prompt encoder's dense positional encoding fixed inside:
    (image embeddings, sparse prompt embeddings, dense prompt embeddings) → (logits of all 4 masks,
    their 4 predicted IoUs), before ``MaskDecoder.forward`` picks single- or multi-mask outputs."""

    def __init__(self, sam: torch.nn.Module) -> None:
        super().__init__()
        self.mask_decoder = sam.mask_decoder
        with torch.no_grad():
            self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe().detach().clone())

    def forward(
        self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)


def decoder_spec(graph: DecoderGraph) -> ExportSpec:
    """The decoder graph's interface; the number of sparse tokens (points, box corners) is dynamic."""
    channels, grid = graph.image_pe.shape[1], tuple(graph.image_pe.shape[-2:])
    return ExportSpec(
        {
            "image_embeddings": torch.zeros(1, channels, *grid),
            "sparse": torch.zeros(1, 2, channels),
            "dense": torch.zeros(1, channels, *grid),
        },
        ("masks", "iou_predictions"),
        {"sparse": {1: "tokens"}},
    )


def _select(
    masks: torch.Tensor, iou: torch.Tensor, multimask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward``'s choice: the three ambiguity masks, or the single-mask output."""
    chosen = slice(1, None) if multimask else slice(0, 1)
    return masks[:, chosen], iou[:, chosen]


class TorchDecoder:
    """The torch mask decoder (the reference and the training path).

    ``note``: why the decoder runs in torch although the encoder does not (None otherwise)."""

    name = "torch"
    precision = "f32"

    def __init__(self, sam: torch.nn.Module, note: str | None = None) -> None:
        self.sam = sam
        self.note = note

    def __call__(
        self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sam.mask_decoder(
            image_embeddings=features,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def describe(self) -> str:
        return "torch" + (f" ({self.note})" if self.note else "")

    def ready(self) -> bool:
        """Whether a prediction now would start without exporting anything (always, in torch)."""
        return True

    def prepare(self) -> None:
        """Nothing to prepare in torch."""


class CompiledDecoder:
    """The mask decoder exported per adapter state (cached) and run by ``runtime`` on the CPU.

    Arguments:
      sam: the model (float32, on the CPU); its torch decoder runs for good when ``fallback`` is set
        and an export failed.
      runtime: "openvino" or "onnxruntime".
      precision: "f32" or "bf16" (OpenVINO's inference precision hint; ONNX Runtime runs f32).
      fallback: run torch (and say why in :attr:`note`) when exporting or loading fails, instead of
        raising; ``--runtime auto`` sets it.
    """

    def __init__(
        self, sam: torch.nn.Module, runtime: str, precision: str = "f32", fallback: bool = False
    ) -> None:
        self.graph = DecoderGraph(sam).eval()
        self.torch = TorchDecoder(sam)
        self.name = runtime
        self.precision = precision
        self.fallback = fallback
        self.note: str | None = None
        self.export_folder: Path | None = None
        self.built = False  # whether the last export loaded was made now (else found in the cache)
        self.exports_loaded = 0  # adapter states exported or found in the cache, then compiled
        self.torch_calls = 0  # predictions made by the torch decoder (fallen back)
        self._runs: OrderedDict[tuple, Runner] = OrderedDict()
        self._lock = (
            threading.Lock()
        )  # one request at a time (a propagation worker may predict too)

    def describe(self) -> str:
        if self.note is not None:
            return f"torch ({self.note})"
        return f"{self.name} ({self.precision})"

    def ready(self) -> bool:
        """Whether a prediction now would start without exporting or compiling (its adapter state is
        loaded, or the decoder has fallen back to torch); else :meth:`prepare` first, off the GUI thread."""
        return self.note is not None or adapter_signature(self.graph) in self._runs

    def prepare(self) -> Runner | None:
        """The runner for the decoder's current adapter state, exported or loaded on first use.

        Raises:
          ModelError: one line, when the export cannot be made or loaded and ``fallback`` is off.
        """
        if self.note is not None:
            return None
        state = adapter_signature(self.graph)
        with self._lock:
            run = self._runs.get(state)
            if run is not None:
                self._runs.move_to_end(state)
                return run
            try:
                run, self.export_folder, self.built = load_export(
                    self.name, self.graph, decoder_spec(self.graph), self._grid(), "decoder",
                    self.precision,
                )  # fmt: skip
            except MiniSAMError:
                raise
            except Exception as error:
                self.note = fallback_note(self.name, "the mask decoder", error, self.fallback)
                return None
            self.exports_loaded += 1
            self._runs[state] = run
            while len(self._runs) > LOADED_STATES:
                self._runs.popitem(last=False)
            return run

    def _grid(self) -> int:
        return int(self.graph.image_pe.shape[-1])

    def __call__(
        self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        run = self.prepare() if sparse.shape[1] > 0 else None
        if run is None:
            self.torch_calls += 1
            return self.torch(features, sparse, dense, multimask)
        arrays = [
            np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
            for tensor in (features, sparse, dense)
        ]
        with self._lock:
            masks, iou = run(arrays)
        masks_t, iou_t = torch.from_numpy(masks), torch.from_numpy(iou)
        return _select(masks_t.to(features.device), iou_t.to(features.device), multimask)


def decoder_runtime(
    encoder, sam: torch.nn.Module, precision: str = "auto"
) -> TorchDecoder | CompiledDecoder:
    """The mask decoder for an engine whose image encoder is ``encoder``: exported with the same
    runtime and fallback when the encoder runs exported, else torch. ``precision`` is the engine's
    checked ``--precision``: auto runs OpenVINO's decoder in bf16 where the CPU has it (see
    :data:`minisam.runtime.choice.OPENVINO_DEFAULT_PRECISION`), f32 and bf16 apply as asked."""
    if not isinstance(encoder, CompiledEncoder) or encoder.note is not None:
        return TorchDecoder(sam)
    chosen = part_precision(check_precision(precision, encoder.name), encoder.name, "decoder")
    decoder = CompiledDecoder(sam, encoder.name, chosen, encoder.fallback)
    decoder.prepare()
    return decoder
