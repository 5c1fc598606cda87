"""User-facing errors: each carries one line that names the argument or file and what is wrong."""

from __future__ import annotations


class MiniSAMError(Exception):
    """Base class of errors caused by what the user gave (a file, an argument, a missing download).

    The CLI prints ``str(error)`` as a single line on stderr and exits with code 2; Slicer modules show it
    as one sentence. The message must therefore be one line and name the culprit.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputError(MiniSAMError):
    """An input file or array cannot be used (missing, corrupt, empty, wrong shape or values)."""


class PromptError(MiniSAMError):
    """A segmentation request that does not fit its image: a point, box or slice outside it, no prompt,
    an unknown or oblique slice axis or view, or a segmentation option out of range (``--min-score``,
    ``--max-slices``, an unusable ``--device``)."""


class ModelError(MiniSAMError):
    """A model name is unknown, or a checkpoint is missing, truncated or of another architecture."""


class OutputError(MiniSAMError):
    """An output path cannot be written (missing folder, no permission, unsupported extension)."""
