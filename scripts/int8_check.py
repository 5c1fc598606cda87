"""Is INT8 worth offering? OpenVINO NNCF post-training quantization of the exported encoder and decoder,
measured against f32 and bf16 on the same CPU, side by side in one run.

The model's OpenVINO IRs (the export cache ``minisam`` itself uses) are quantized by ``nncf.quantize``
(TRANSFORMER preset) on calibration slices that no evaluation set holds (HC18 and Montgomery/Shenzhen
training images), in two variants: every quantizable layer ("int8") and the matrix multiplications only,
convolutions (transposed ones too) kept in float ("int8-matmul"). Each variant then segments the 2D
images of the evaluation manifests (box and one click from the ground truth, as ``minisam bench``):
median ms per encoder and decoder call, Dice of its masks against f32's and against the truth.
Usage (docs/bench/encoder_runtimes.md)::

    pip install nncf
    OMP_NUM_THREADS=2 python scripts/int8_check.py --data ../shared/data --out int8.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minisam.bench_images import bench_images, load_rgb, truth_mask  # noqa: E402
from minisam.dataset_manifest import read_manifest  # noqa: E402
from minisam.engine import SamEngine, SliceEmbedding  # noqa: E402
from minisam.metrics import dice  # noqa: E402
from minisam.model_loader import load_model  # noqa: E402
from minisam.prompts import Prompt  # noqa: E402

MANIFESTS = [
    REPO / "docs" / "eval" / f"{name}.csv" for name in ("cxr_heldout", "us_hc18", "compact")
]
CALIBRATION = {  # folder of the shared data → slice of its sorted images (none is in an evaluation set)
    "hc18_fetal_head_us/images": slice(60, 75),
    "cxr_lung_montgomery_shenzhen/images": slice(100, 115),
}
VARIANTS = ("f32", "bf16", "int8", "int8-matmul")


def _calibration(data: Path, engine: SamEngine, evaluated: set[str]):
    """(encoder inputs, decoder inputs) of the calibration slices: a box and a click on each."""
    encoder_inputs, decoder_inputs = [], []
    rng = np.random.default_rng(0)
    for folder, chosen in CALIBRATION.items():
        paths = [
            p for p in sorted((data / folder).glob("*.png")) if str(p.resolve()) not in evaluated
        ]
        for path in paths[chosen]:
            rgb = load_rgb(path).astype(np.float32)
            encoder_inputs.append(_arrays(engine.model_input(rgb)[0])[0])
            embedding = engine.embed(rgb)
            height, width = rgb.shape[:2]
            x0, y0 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
            for prompt in (
                Prompt.create(box=[x0, y0, x0 + width / 3, y0 + height / 3]),
                Prompt.create(positive=[[rng.uniform(0, width), rng.uniform(0, height)]]),
            ):
                decoder_inputs.append(_decoder_input(engine, embedding, prompt))
    return encoder_inputs, decoder_inputs


def _arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [np.ascontiguousarray(t.detach().cpu().numpy()) for t in tensors]


def _decoder_input(engine: SamEngine, embedding: SliceEmbedding, prompt: Prompt) -> list:
    """The exported decoder's inputs: (image embeddings, sparse, dense) for ``prompt``."""
    return _arrays(embedding.features, *engine.prompt_embeddings(prompt, embedding.transform))


def _compiled(core, model, precision: str, threads: int):
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
    }
    return core.compile_model(model, "CPU", config).create_infer_request()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--images", type=int, default=30, help="evaluation images (in turn per set)"
    )
    parser.add_argument("--out", type=Path, help="JSON of the rows")
    args = parser.parse_args()
    import nncf
    import openvino as ov

    loaded = load_model(args.model)
    engine = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="f32")
    threads = torch.get_num_threads()
    images = bench_images(MANIFESTS, args.images)
    encoder_calibration, decoder_calibration = _calibration(
        args.data, engine, {image["path"] for image in images}
    )
    core = ov.Core()
    base = {
        "encoder": core.read_model(str(engine.encoder.export_folder / "model.xml")),
        "decoder": core.read_model(str(engine.decoder.export_folder / "model.xml")),
    }
    calibration = {"encoder": encoder_calibration, "decoder": decoder_calibration}
    data = {
        "encoder": nncf.Dataset(encoder_calibration, lambda x: {0: x}),
        "decoder": nncf.Dataset(decoder_calibration, lambda x: dict(enumerate(x))),
    }
    requests = {}
    for variant in VARIANTS:
        for part, model in base.items():
            if variant.startswith("int8"):
                ignored = None
                if variant == "int8-matmul":
                    ignored = nncf.IgnoredScope(
                        types=["Convolution", "GroupConvolution", "ConvolutionBackpropData"],
                        validate=False,
                    )
                model = nncf.quantize(
                    model, data[part], subset_size=len(calibration[part]),
                    model_type=nncf.ModelType.TRANSFORMER, ignored_scope=ignored,
                )  # fmt: skip
            precision = "bf16" if variant == "bf16" else "f32"
            requests[variant, part] = _compiled(core, model, precision, threads)

    specs = {str(spec.image.resolve()): spec for m in MANIFESTS for spec in read_manifest(m)}
    rows = []
    for image in images:
        rgb = load_rgb(image["path"]).astype(np.float32)
        model_input, transform = engine.model_input(rgb)
        encoder_input = _arrays(model_input)[0]
        truth = truth_mask(specs[image["path"]])
        reference: dict[str, np.ndarray] = {}
        for variant in VARIANTS:
            start = time.perf_counter()
            requests[variant, "encoder"].infer({0: encoder_input})
            encoder_ms = (time.perf_counter() - start) * 1e3
            features = torch.from_numpy(
                requests[variant, "encoder"].get_output_tensor(0).data.copy()
            )
            embedding = SliceEmbedding(features=features, transform=transform)
            for kind, prompt in (
                ("box", Prompt.create(box=image["box"])),
                ("one click", Prompt.create(positive=[image["point"]])),
            ):
                inputs = _decoder_input(engine, embedding, prompt)
                request = requests[variant, "decoder"]
                start = time.perf_counter()
                request.infer(dict(enumerate(inputs)))
                decoder_ms = (time.perf_counter() - start) * 1e3
                masks = torch.from_numpy(request.get_output_tensor(0).data.copy())
                iou = request.get_output_tensor(1).data.copy()
                chosen = 0 if kind == "box" else 1 + int(np.argmax(iou[0, 1:]))
                mask = engine.logits_to_masks(transform, masks[0, chosen : chosen + 1].numpy())[0]
                reference.setdefault(kind, mask)
                rows.append(
                    {
                        "case": image["case"], "variant": variant, "prompt": kind,
                        "encoder_ms": encoder_ms, "decoder_ms": decoder_ms,
                        "dice_vs_f32": dice(mask, reference[kind]), "dice": dice(mask, truth),
                    }
                )  # fmt: skip
    _print(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


def _print(rows: list[dict]) -> None:
    print("| variant | encoder ms | decoder ms | prompt | Dice vs f32 mean / min | Dice vs truth |")
    print("|---|---|---|---|---|---|")
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        encoder = statistics.median(r["encoder_ms"] for r in mine)
        decoder = statistics.median(r["decoder_ms"] for r in mine)
        for kind in ("box", "one click"):
            chosen = [r for r in mine if r["prompt"] == kind]
            vs = [r["dice_vs_f32"] for r in chosen]
            print(
                f"| {variant} | {encoder:.0f} | {decoder:.1f} | {kind} | "
                f"{statistics.mean(vs):.4f} / {min(vs):.4f} | "
                f"{statistics.mean(r['dice'] for r in chosen):.4f} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
