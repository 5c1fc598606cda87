"""Entry point of the ``minisam`` command: sub-commands, one-line errors, exit codes.

Exit codes: 0 success, 2 bad input (argument, file, model; one line on stderr, no traceback, no output left
behind), 130 interrupted. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from minisam.errors import MiniSAMError

EXIT_BAD_INPUT = 2


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from minisam import __version__
    from minisam.cli import (
        adapters_command,
        bench_command,
        calibrate_command,
        distill_command,
        evaluate_command,
        models_command,
        quant_report_command,
        segment_command,
        train_adapter_command,
        train_base_command,
        web_command,
    )

    parser = OneLineArgumentParser(
        prog="minisam",
        description="Segment Anything for medical images: promptable 2D/3D segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"minisam {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show what ITK/GDCM print themselves (hidden by default)",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=OneLineArgumentParser
    )
    segment_command.register(commands)
    models_command.register(commands)
    adapters_command.register(commands)
    bench_command.register(commands)
    evaluate_command.register(commands)
    train_base_command.register(commands)
    distill_command.register(commands)
    train_adapter_command.register(commands)
    quant_report_command.register(commands)
    calibrate_command.register(commands)
    web_command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from minisam.library_noise import show_native_output

    show_native_output(args.verbose)
    try:
        return int(args.run(args) or 0)
    except MiniSAMError as error:
        print(f"minisam {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"minisam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
