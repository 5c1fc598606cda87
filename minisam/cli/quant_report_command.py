"""``minisam quant-report``: quantization error of the image encoder, per layer and overall.

Writes ``DIR/quant_error.json`` (:data:`REPORT_SCHEMA`) and the PNG plots of
:mod:`minisam.analysis.quant_plots`, and prints a Markdown table (overall and the worst layers).
Everything is written into a hidden folder next to ``DIR`` and moved into place at the end, so a
failed run leaves no partial output.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from minisam.errors import InputError, OutputError

if TYPE_CHECKING:
    from minisam.analysis.quant_error import QuantErrorAnalysis

REPORT_SCHEMA = "minisam.quant_report/1"
REPORT_FILE = "quant_error.json"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quant-report",
        help="analyse the weight error of a quantization scheme (JSON + PNG plots)",
        description="Quantize the linears a scheme selects (the image encoder's for nf4/int8, also "
        "the mask decoder's with nf4:all or a 'decoder' group) and compare every "
        "quantized weight with its fp32 value: error histogram, fp32-vs-quantized scatter, "
        "|error| vs |weight|, Q-Q plot against a normal, relative error per layer.",
    )
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (embedded), an official name (sam_vit_b, ...), random:<arch>, or a path",
    )
    parser.add_argument(
        "--quant",
        required=True,
        help="scheme: nf4, int8, or e.g. 'nf4:mlp+int8:attn' (see minisam/quantization/scheme.py)",
    )
    parser.add_argument("--out", required=True, help="output folder (created; files replaced)")
    parser.add_argument(
        "--max-points",
        type=int,
        default=50_000,
        help="at most this many weights in the scatter and Q-Q plots (default %(default)s)",
    )
    parser.set_defaults(run=run)


def check_output_folder(path: Path) -> Path:
    """``path`` as an absolute folder target; OutputError if it cannot be created or written.

    Nothing is created here: the nearest existing ancestor must be a writable folder.
    """
    target = Path(os.path.abspath(path.expanduser()))
    if target.exists() and not target.is_dir():
        raise OutputError(f"--out {path}: exists and is not a folder")
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise OutputError(f"--out {path}: the folder is not writable")
        if not os.access(target.parent, os.W_OK | os.X_OK):
            raise OutputError(f"--out {path}: its parent folder {target.parent} is not writable")
        return target
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"--out {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"--out {path}: cannot create the folder, {ancestor} is not writable")
    return target


def report_payload(
    model: str, model_name: str, analysis: QuantErrorAnalysis, plots: list[str]
) -> dict:
    """The quant_error.json document."""
    return {
        "schema": REPORT_SCHEMA,
        "model": model,
        "model_name": model_name,
        "scheme": analysis.scheme,
        "overall": analysis.overall,
        "layers": analysis.layers,
        "plots": plots,
    }


def run(args: argparse.Namespace) -> int:
    from minisam.analysis.quant_error import analyze_model, markdown_table
    from minisam.analysis.quant_plots import PLOT_FILES, check_matplotlib, write_plots
    from minisam.atomic import atomic_files_into
    from minisam.evaluation.outputs import write_json
    from minisam.model_loader import load_model
    from minisam.quantization import parse_scheme

    if args.max_points < 1:
        raise InputError(f"--max-points {args.max_points} must be at least 1")
    scheme = parse_scheme(args.quant)
    if not scheme.groups:
        raise InputError(f"--quant {args.quant}: the scheme quantizes no encoder layer")
    target = check_output_folder(Path(args.out))
    check_matplotlib()
    model = load_model(args.model)
    analysis = analyze_model(model, scheme)
    try:
        with atomic_files_into(target) as staging:
            plots = write_plots(analysis, staging, max_points=args.max_points)
            write_json(
                staging / REPORT_FILE, report_payload(args.model, model.name, analysis, plots)
            )
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(f"--out {args.out}: cannot write the report ({reason})") from None
    print(f"Quantization error of {model.name}, scheme {analysis.scheme}\n")
    print(markdown_table(analysis))
    print(f"\nwrote {target / REPORT_FILE} and {len(PLOT_FILES)} plots")
    return 0
