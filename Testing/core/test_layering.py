"""Layering: the command line is a client of the core, never a library the core or the modules use."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENT_FOLDERS = ("minisam", "MiniSAMSegment", "MiniSAMTrain", "scripts")
# The command line itself, and ``python -m minisam``, which only starts it.
CLI_FILES = ("minisam/cli/", "minisam/__main__.py")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def test_nothing_outside_the_cli_imports_it() -> None:
    offenders = []
    for folder in CLIENT_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative.startswith(CLI_FILES):
                continue
            cli = sorted(n for n in _imported_modules(path) if n.startswith("minisam.cli"))
            if cli:
                offenders.append(f"{relative}: {', '.join(cli)}")
    assert not offenders, offenders
