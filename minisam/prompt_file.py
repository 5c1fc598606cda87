"""Prompts for several slices from a JSON file (CLI ``--prompts``; the Slicer batch script reads the same).

Format: a list of objects, one per prompted slice::

    [{"slice": 40, "box": [x0, y0, x1, y1]},
     {"slice": 55, "points": [[x, y]], "negative_points": [[x, y]]}]

``slice`` may be omitted for a 2D image. Coordinates are pixel indices of that slice (x = column, y = row).
"""

from __future__ import annotations

import json
from pathlib import Path

from minisam.errors import InputError
from minisam.prompts import Prompt

_KEYS = {"slice", "box", "points", "negative_points"}


def read_prompt_file(path: str | Path) -> dict[int, Prompt]:
    """Prompts per slice index from ``path``; a one-line InputError names the file and the problem."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--prompts file {path} cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"--prompts file {path} is not valid JSON (line {exc.lineno}: {exc.msg})"
        ) from None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"--prompts file {path} must hold a non-empty list of slice prompts")
    prompts: dict[int, Prompt] = {}
    for number, entry in enumerate(entries, 1):
        where = f"--prompts file {path}, entry {number}"
        if not isinstance(entry, dict) or not entry.keys() <= _KEYS:
            raise InputError(f"{where}: expected an object with keys among {sorted(_KEYS)}")
        index = entry.get("slice", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise InputError(f"{where}: slice must be an integer, not {index!r}")
        if index in prompts:
            raise InputError(f"{where}: slice {index} is prompted twice")
        try:
            prompt = Prompt.create(
                entry.get("points"), entry.get("negative_points"), entry.get("box")
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed coordinates ({exc})") from None
        if prompt.is_empty:
            raise InputError(f"{where}: needs a box or points")
        prompts[index] = prompt
    return prompts
