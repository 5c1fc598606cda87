"""``minisam evaluate``: configurations × manifest cases → cases.csv, summary.md, summary.json and
report.html (with plots/*.png; ``--no-report`` leaves them out).

Exit codes: 0 every case evaluated; 1 some cases failed (one line each on stderr, listed in the
summary); 2 bad run input (arguments, manifest structure, output folder, model).
"""

from __future__ import annotations

import argparse
import sys

EXIT_CASES_FAILED = 1


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="evaluate model configurations on a manifest of images and labels",
        description="Simulate prompts from the ground truth of every manifest case and record Dice, "
        "IoU, NSD, HD95, mask SSIM, predicted IoU and timings per configuration. Manifest: CSV with "
        "columns image,label (paths relative to the CSV) and optional label_value, modality, case, "
        "dataset. Re-running on the same --out resumes (cases already evaluated are kept).",
    )
    parser.add_argument(
        "--manifest", action="append", required=True, help="manifest CSV (repeatable)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    configs = parser.add_argument_group("configurations (default: --model default)")
    configs.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=MODEL[,quant=Q][,adapter=A][,runtime=R][,precision=P]",
        help="a named configuration (repeatable)",
    )
    configs.add_argument(
        "--model", action="append", default=[], help="model as in minisam segment (repeatable)"
    )
    configs.add_argument(
        "--quant", action="append", default=[], help="once for all --model or once per --model"
    )
    configs.add_argument(
        "--adapter", action="append", default=[], help="once for all --model or once per --model"
    )
    configs.add_argument(
        "--runtime",
        default="torch",
        help="where the image encoder and mask decoder run for every configuration without its own runtime=: "
        "torch (default, the reference), auto, openvino, onnxruntime",
    )
    configs.add_argument(
        "--precision",
        default="auto",
        help="the exported encoder's and decoder's precision: auto (default: encoder f32, OpenVINO's "
        "decoder bf16), f32, bf16 (openvino only), int8 (openvino only: the encoder, after "
        "`minisam calibrate-int8`)",
    )
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--prompt",
        default="box",
        help="box[:JITTER] (default box:0.05), points:K or clicks:K",
    )
    protocol.add_argument("--seed", type=int, default=0, help="seed of the prompt simulation")
    protocol.add_argument(
        "--tolerance-mm", type=float, default=1.0, help="NSD tolerance in mm (default 1)"
    )
    protocol.add_argument(
        "--propagate",
        action="store_true",
        help="volumes: propagate from the prompted slice and score the 3D mask",
    )
    protocol.add_argument(
        "--multimask",
        nargs="?",
        const="always",
        choices=("always", "auto"),
        help="keep the best of SAM's 3 masks: for every prompt (--multimask, --multimask always) or, "
        "as minisam segment and the Slicer effect do, for a lone click only (--multimask auto); "
        "without it one mask per prompt",
    )
    protocol.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples for the CI"
    )
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write report.html (tables, Dice box plots, best/median/worst gallery) and "
        "plots/*.png into --out (default: on)",
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from minisam.errors import InputError
    from minisam.evaluation.configs import build_configurations
    from minisam.evaluation.pipeline import run_evaluation
    from minisam.evaluation.prompting import parse_prompt_mode
    from minisam.evaluation.runner import EvaluationSettings

    if args.bootstrap < 100:
        raise InputError(f"--bootstrap {args.bootstrap} must be at least 100")
    if not args.tolerance_mm >= 0:
        raise InputError(f"--tolerance-mm {args.tolerance_mm} must be >= 0")
    configs = build_configurations(
        args.config, args.model, args.quant, args.adapter, args.runtime, args.precision
    )
    settings = EvaluationSettings(
        prompt=parse_prompt_mode(args.prompt),
        seed=args.seed,
        tolerance_mm=args.tolerance_mm,
        propagate=args.propagate,
        multimask={None: False, "always": True, "auto": None}[args.multimask],
        device=args.device,
    )
    outcome = run_evaluation(
        args.manifest,
        configs,
        settings,
        args.out,
        fresh=args.fresh,
        progress=not args.quiet,
        n_boot=args.bootstrap,
    )
    report = None
    if args.report:
        from minisam.evaluation.report import write_report

        report = write_report(outcome, settings, manifests=args.manifest, n_boot=args.bootstrap)
    if not args.quiet:
        for entry in outcome.payload["summary"]:
            dice = entry["metrics"]["dice"]
            print(
                f"{entry['dataset']} [{entry['modality']}] {entry['config']}: "
                f"{entry['n_ok']} ok, {entry['n_failed']} failed, Dice {dice['mean']:.3f} "
                f"[{dice['ci_low']:.3f}, {dice['ci_high']:.3f}]"
            )
        print(f"results written to {outcome.out_dir}")
        if report is not None:
            print(f"report: {report}")
    if outcome.n_failed:
        failed_cases = {(r["dataset"], r["case"]) for r in outcome.rows if r["status"] != "ok"}
        print(
            f"minisam evaluate: {len(failed_cases)} case(s) failed; see {outcome.out_dir}/summary.md",
            file=sys.stderr,
        )
        return EXIT_CASES_FAILED
    return 0
