"""Log lines of third-party libraries that are noise for MiniSAM users, filtered before they can appear.

bitsandbytes logs at import time, and peft imports bitsandbytes whenever it is installed, so the filter
is installed when ``minisam`` is imported (it imports nothing itself).
"""

from __future__ import annotations

import logging

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
