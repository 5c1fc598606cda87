"""The image encoder as ``SamEngine`` calls it: torch's module, or an export run by OpenVINO / ONNX Runtime.

Both take the preprocessed (1, 3, S, S) float tensor and return the (1, C, g, g) features. An exported
encoder holds the *base* encoder's weights: while a LoRA adapter on the encoder is active it runs the
torch module instead (adapters switch per image in milliseconds; an export per adapter would cost
seconds to minutes each). Decoder-only adapters leave the encoder alone and keep the fast path.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from minisam.errors import MiniSAMError
from minisam.runtime.adapter_state import adapter_active
from minisam.runtime.backends import Runner, fallback_note, load_export
from minisam.runtime.onnx_export import encoder_spec


class TorchEncoder:
    """The torch image encoder, the reference and the training path.

    ``note``: why ``--runtime auto`` runs torch here (None when torch was asked for).
    """

    name = "torch"
    precision = "f32"

    def __init__(self, module: torch.nn.Module, note: str | None = None) -> None:
        self.module = module
        self.note = note

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.module(image)

    def describe(self) -> str:
        return "torch" + (f" ({self.note})" if self.note else "")


class CompiledEncoder:
    """The image encoder exported once (cached, see :mod:`minisam.runtime.export_cache`) and run by
    ``runtime`` ("openvino" or "onnxruntime") on the CPU.

    Arguments:
      module: the torch image encoder (float32, on the CPU); it runs instead while an encoder adapter
        is active, and for good when ``fallback`` is set and the export failed.
      runtime: "openvino" or "onnxruntime".
      input_size: the square input side the export is fixed to.
      precision: "f32" or "bf16" (OpenVINO's inference precision hint; ONNX Runtime runs f32), or
        "int8" (OpenVINO: the calibrated INT8 export, :mod:`minisam.runtime.int8_encoder`).
      fallback: run torch (and say why in :attr:`note`) when exporting or loading fails, instead of
        raising; ``--runtime auto`` sets it (a missing INT8 calibration raises all the same).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        runtime: str,
        input_size: int,
        precision: str = "f32",
        fallback: bool = False,
    ) -> None:
        self.module = module
        self.name = runtime
        self.input_size = int(input_size)
        self.precision = precision
        self.fallback = fallback
        self.note: str | None = None
        self.export_folder: Path | None = None
        self.built = False  # whether this encoder made its export (else it found it in the cache)
        self.torch_calls = 0  # slices encoded by the torch module (adapter active or fallen back)
        self._run: Runner | None = None
        self._lock = threading.Lock()  # one inference request at a time (Slicer precomputes)

    def describe(self) -> str:
        if self.note is not None:
            return f"torch ({self.note})"
        return f"{self.name} ({self.precision})"

    def prepare(self) -> None:
        """Export (or find the cached export) and load it; nothing while an encoder adapter is active
        (the export is then made from the base encoder at the first slice without one).

        Raises:
          ModelError: one line, when the export cannot be made or loaded and ``fallback`` is off.
        """
        if self._run is not None or self.note is not None:
            return
        if adapter_active(self.module):
            return
        try:
            self._run = self._load()
        except MiniSAMError:
            raise
        except Exception as error:
            self.note = fallback_note(self.name, "the image encoder", error, self.fallback)

    def _load(self) -> Runner:
        if self.precision == "int8":
            from minisam.runtime.int8_encoder import load_int8_encoder

            run, self.export_folder = load_int8_encoder(
                self.module, self.input_size, torch.get_num_threads()
            )
            return run
        spec = encoder_spec(self.input_size)
        run, self.export_folder, self.built = load_export(
            self.name, self.module, spec, self.input_size, "encoder", self.precision
        )
        return run

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.note is None and not adapter_active(self.module):
            self.prepare()
            if self._run is not None:
                array = image.detach().to("cpu", torch.float32).numpy()
                with self._lock:
                    (features,) = self._run([np.ascontiguousarray(array)])
                return torch.from_numpy(features).to(image.device)
        self.torch_calls += 1
        return self.module(image)
