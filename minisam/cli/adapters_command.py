"""``minisam adapters``: list, install and remove per-modality adapters in the adapter library."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("adapters", help="list, install or remove modality adapters")
    parser.add_argument(
        "--library", help="library folder (default $MINISAM_ADAPTERS or ~/.local/share/...)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="installed and built-in adapters")
    install = actions.add_parser("install", help="copy an adapter folder into the library")
    install.add_argument("folder")
    install.add_argument(
        "--replace", action="store_true", help="replace an adapter of the same name"
    )
    remove = actions.add_parser(
        "remove", help="delete an installed adapter (built-in ones cannot be removed)"
    )
    remove.add_argument("name")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from minisam.adapters import AdapterLibrary  # imports peft: only when this command runs

    library = AdapterLibrary(args.library)
    if args.action == "install":
        info = library.install(args.folder, replace=args.replace)
        print(f"installed {info.name} ({info.modality}, rank {info.rank}) into {info.path}")
    elif args.action == "remove":
        library.remove(args.name)
        print(f"removed {args.name}")
    else:
        rows = library.list()
        print(f"adapter library: {library.root}")
        if library.builtin is not None:
            print(f"built-in adapters: {library.builtin}")
        if not rows:
            print("  (empty)")
        for info in rows:
            rank = "-" if info.rank is None else info.rank
            print(
                f"  {info.name:<16} {'built-in' if info.builtin else 'user':<8} {info.modality:<6} "
                f"{info.method:<8} rank {rank:<3} {info.trainable_params / 1e6:.2f} M params  "
                f"{info.size_bytes / 1e6:.2f} MB  base {info.base_hash}"
            )
    return 0
