"""Do the exported encoder runtimes give torch's masks? Dice of each runtime's mask against torch's.

For every case of the evaluation manifests (docs/eval/*.csv), the prompt is simulated from the ground
truth as ``minisam evaluate`` does (same seed, same protocol); torch and each runtime then segment the
prompted slice with that same prompt. Per model, runtime, prompt and dataset: the Dice of the runtime's
mask against torch's (mean and minimum), the relative error of the slice embedding, and both masks'
Dice against the ground truth. Usage (the command behind docs/bench/encoder_runtimes.md)::

    OMP_NUM_THREADS=2 python scripts/runtime_agreement.py --models default litemedsam \\
        litemedsam-clicks --runtimes openvino:f32 openvino:bf16 onnxruntime --prompts box points:1

A runtime ``openvino:f32:bf16`` runs the encoder in f32 and the mask decoder alone in bf16 (the
decoder otherwise follows the encoder's precision). The embedding of the reference is torch's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minisam.dataset_manifest import read_manifest  # noqa: E402
from minisam.engine import SamEngine  # noqa: E402
from minisam.evaluation.cases import load_case  # noqa: E402
from minisam.evaluation.prompting import case_rng, parse_prompt_mode, simulate  # noqa: E402
from minisam.metrics import dice  # noqa: E402
from minisam.model_loader import load_model  # noqa: E402
from minisam.runtime.decoder import CompiledDecoder  # noqa: E402
from minisam.volume_session import VolumeSession  # noqa: E402

MANIFESTS = sorted((REPO / "docs" / "eval").glob("*.csv"))


def measure(models, runtimes, prompts, manifests, seed: int) -> list[dict]:
    """One row per model × runtime × prompt × case."""
    cases = [load_case(spec) for manifest in manifests for spec in read_manifest(manifest)]
    rows = []
    for model in models:
        loaded = load_model(model)
        engines = {"torch": SamEngine(loaded.sam, loaded.config)}
        for text in runtimes:
            runtime, _, precisions = text.partition(":")
            precision, _, decoder_precision = precisions.partition(":")
            engines[text] = SamEngine(
                loaded.sam, loaded.config, runtime=runtime, precision=precision or "auto"
            )
            if decoder_precision:  # "openvino:f32:bf16": the decoder alone in another precision
                engines[text].decoder = CompiledDecoder(loaded.sam, runtime, decoder_precision)
        for case in cases:
            sessions = {
                name: VolumeSession(engine, case.normalized, is_rgb=case.is_rgb)
                for name, engine in engines.items()
            }
            reference = sessions["torch"].embedding(0, case.slice_index).features
            for mode_text in prompts:
                mode = parse_prompt_mode(mode_text)
                rng = case_rng(seed, case.spec.dataset, case.spec.case)

                def predict(prompt, session=sessions["torch"], index=case.slice_index):
                    return session.predict(0, index, prompt)

                prompt, expected = simulate(mode, case.slice_truth, rng, predict)
                for name in runtimes:
                    features = sessions[name].embedding(0, case.slice_index).features
                    mask = sessions[name].predict(0, case.slice_index, prompt).mask
                    rows.append(
                        {
                            "model": model,
                            "runtime": name,
                            "prompt": str(mode),
                            "dataset": case.spec.dataset,
                            "case": case.spec.case,
                            "dice_vs_torch": dice(mask, expected.mask),
                            "embedding_rel_error": float(
                                (features - reference).norm() / reference.norm()
                            ),
                            "dice_gt_torch": dice(expected.mask, case.slice_truth),
                            "dice_gt_runtime": dice(mask, case.slice_truth),
                        }
                    )
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per model, runtime, prompt and dataset (and all datasets)."""
    lines = [
        "| model | runtime | prompt | dataset | cases | Dice vs torch, mean | min | "
        "embedding error, mean % | Dice vs truth: torch | runtime |",
        "|" + "---|" * 10,
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["model"], row["runtime"], row["prompt"])
        groups.setdefault((*key, row["dataset"]), []).append(row)
        groups.setdefault((*key, "all"), []).append(row)
    for (model, runtime, prompt, dataset), items in groups.items():
        agreement = [r["dice_vs_torch"] for r in items]
        lines.append(
            f"| {model} | {runtime} | {prompt} | {dataset} | {len(items)} "
            f"| {statistics.mean(agreement):.4f} | {min(agreement):.4f} "
            f"| {100 * statistics.mean(r['embedding_rel_error'] for r in items):.2f} "
            f"| {statistics.mean(r['dice_gt_torch'] for r in items):.4f} "
            f"| {statistics.mean(r['dice_gt_runtime'] for r in items):.4f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "litemedsam"])
    parser.add_argument(
        "--runtimes", nargs="+", default=["openvino:f32", "openvino:bf16", "onnxruntime"]
    )
    parser.add_argument("--prompts", nargs="+", default=["box"])
    parser.add_argument("--manifests", nargs="+", type=Path, default=MANIFESTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = measure(args.models, args.runtimes, args.prompts, args.manifests, args.seed)
    print(table(rows))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
