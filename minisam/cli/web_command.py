"""``minisam web``: MiniSAM in the browser (a trame-slicer app; the app itself is ``MiniSAMWeb/``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from minisam.errors import InputError

WEB_FOLDER = Path(__file__).resolve().parents[2] / "MiniSAMWeb"
"""The app, beside MiniSAMSegment in the source tree (it is glue on MiniSAMSegmentLib, like the modules)."""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "web",
        help="serve MiniSAM in the browser: slice views, click/box prompts, propagate, undo, save",
        description="Serve slice views of VOLUMEs with the MiniSAM effect (click = positive point, "
        "Shift/right click = negative, drag = box) at http://HOST:PORT/. One session per server: "
        "every browser tab on it shows and edits the same volumes and segments (trame's single-user "
        "model); several users run one server each (another --port). Needs the web extra: "
        "pip install -e '.[web]'.",
    )
    parser.add_argument(
        "volumes", nargs="*", metavar="VOLUME",
        help="volume files or DICOM folders to open (more can be uploaded in the page)",
    )  # fmt: skip
    parser.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080)")
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 serves other machines too)",
    )  # fmt: skip
    parser.add_argument("--model", default="default", help="as for minisam segment (default)")
    parser.add_argument(
        "--adapter", default="auto", help="auto (by modality), none, or an adapter name/folder"
    )
    parser.add_argument(
        "--modality", default="auto", help="intensity preset, as for minisam segment (auto)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--runtime", default="auto",
        help="image encoder runtime, as for minisam segment: auto (OpenVINO on CPU, torch on CUDA), "
        "torch, openvino, onnxruntime",
    )  # fmt: skip
    parser.add_argument(
        "--precision", default="auto",
        help="the runtime's arithmetic, as for minisam segment: auto, f32, bf16, int8 (openvino only; "
        "int8 after minisam calibrate-int8)",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", type=Path, default=Path("."),
        help="folder where Save writes (default: the current folder)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1..65535")
    return port


def check_environment() -> None:
    """Refuse with one line when the app or its libraries are missing."""
    if not (WEB_FOLDER / "MiniSAMWebLib" / "app.py").is_file():
        raise InputError(f"minisam web runs from a source checkout: {WEB_FOLDER} is missing")
    if importlib.util.find_spec("trame_slicer") is None:
        raise InputError("minisam web needs trame-slicer: pip install -e '.[web]'")


def run(args: argparse.Namespace) -> int:
    for volume in args.volumes:
        if not Path(volume).exists():
            raise InputError(f"volume {volume} does not exist")
    if not args.output_dir.is_dir():
        raise InputError(f"--output-dir {args.output_dir} is not a folder")
    check_environment()
    if str(WEB_FOLDER) not in sys.path:
        sys.path.insert(0, str(WEB_FOLDER))
    import MiniSAMWebLib  # noqa: F401  (puts MiniSAMSegmentLib on the path)
    from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic
    from MiniSAMWebLib.app import MiniSAMWebApp

    from minisam.runtime import check_precision, check_runtime

    runtime = check_runtime(args.runtime, "--runtime")
    logic = MiniSAMSegmentLogic(
        model_spec=args.model,
        device=args.device,
        modality=args.modality,
        adapter=args.adapter,
        runtime=runtime,
        precision=check_precision(args.precision, runtime),
    )
    logic.load()  # an unknown model or a bad checkpoint is refused now, not at the first click
    app = MiniSAMWebApp(logic, output_dir=args.output_dir)
    for volume in args.volumes:
        app.session.load_volume(volume)
    print(f"minisam web: serving on http://{args.host}:{args.port}/", flush=True)
    app.start(host=args.host, port=args.port)
    return 0
