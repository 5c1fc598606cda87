"""Log lines of third-party libraries that are noise for MiniSAM users, filtered before they can appear.

bitsandbytes logs at import time, and peft imports bitsandbytes whenever it is installed, so the filter
is installed when ``minisam`` is imported (it imports nothing itself). The C/C++ libraries (ITK,
GDCM, VTK) print to the process's stderr directly: :func:`native_output_captured` catches that.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# The optional "kernels" package would only replace bnb's built-in fused CPU kernel, and the fp16 cast
# of int8 inputs is logged on every call.
BNB_NOISE = ("Failed to load CPU gemm_4bit_forward", "MatMul8bitLt: inputs will be cast")
BNB_NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions")


class _DropBnbNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(BNB_NOISE)


def quiet_library_noise() -> None:
    """Attach the filter to bitsandbytes' noisy loggers (idempotent)."""
    for name in BNB_NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBnbNoise) for f in logger.filters):
            logger.addFilter(_DropBnbNoise())


# ------------------------------------------------------------------------------------- native output
# ITK, GDCM, MetaIO and VTK print warnings and errors straight to file descriptor 2 from C++, where
# Python's logging cannot filter them. Around calls into them, fd 2 is pointed at a temporary file;
# what they printed is then shown (``--verbose``) or passed to the "minisam.native" logger at DEBUG.

_native = {"shown": False}


def show_native_output(show: bool) -> None:
    """Let the C/C++ libraries' own messages through (``minisam --verbose``) or not (default)."""
    _native["shown"] = bool(show)


def native_output_shown() -> bool:
    """True when :func:`show_native_output` let the libraries' messages through."""
    return _native["shown"]


@contextmanager
def native_output_captured() -> Iterator[None]:
    """Capture what native libraries write to file descriptor 2 while the block runs.

    The text is written back to stderr afterwards when :func:`native_output_shown`, and otherwise
    logged at DEBUG on the ``minisam.native`` logger: a normal or refused run keeps stderr to
    MiniSAM's own lines.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield  # no file descriptor 2 to capture (an embedded interpreter)
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            if text.strip():
                if _native["shown"]:
                    sys.stderr.write(text)
                else:
                    logging.getLogger("minisam.native").debug(text.rstrip())


# ------------------------------------------------------------------------------------ rich progress
@contextmanager
def rich_progress_to_stderr(quiet: bool) -> Iterator[None]:
    """NNCF draws its progress bars with rich on rich's global console, which writes to stdout: while the
    block runs, send them to the stderr this process had when the block began (so that a
    :func:`native_output_captured` inside it does not swallow them), or nowhere when ``quiet``."""
    try:
        from rich import get_console
    except ImportError:  # no rich, no bars
        yield
        return
    console = get_console()
    # ``Console.file`` reads sys.stdout anew at every write while ``_file`` is None; the setter would pin
    # the stream of the moment, so the attribute itself is saved and restored
    before = console._file, console.quiet
    stream = None
    if not quiet:
        try:
            stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        except (OSError, ValueError, AttributeError):
            quiet = True  # no file descriptor to write to (an embedded interpreter)
    console.quiet = quiet
    if stream is not None:
        console.file = stream
    try:
        yield
    finally:
        console._file, console.quiet = before
        if stream is not None:
            stream.close()
