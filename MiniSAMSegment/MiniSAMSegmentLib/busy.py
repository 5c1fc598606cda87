"""One MiniSAM action at a time, and long work off the GUI thread while the GUI keeps painting. No Qt.

While the effect installs packages, loads a model, computes a slice's embedding or propagates, it lets Qt
process events (a progress dialog, a repainting window). A click in a slice view then arrives in the middle
of that action; :class:`BusyGuard` refuses it with one clear line instead of running a second action inside
the first one (a second pip install, a prompt merged into a half-written book, a model loaded twice).

:func:`run_in_background` is how long work leaves the click handler: the work runs on a worker thread and
the calling (GUI) thread waits in ``Thread.join(interval)``, which releases the GIL, calling ``pump()``
between waits (the effect's pump processes Qt events and moves its progress dialog). Slicer keeps the GIL on
its main thread while the Qt event loop runs, so a worker thread merely polled by a QTimer would hardly
advance; waiting in ``join`` lets it run at full speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from minisam.errors import MiniSAMError

__all__ = ["BusyError", "BusyGuard", "run_in_background"]

T = TypeVar("T")
PUMP_SECONDS = 0.05  # how often the waiting GUI thread processes events (20 times a second)


class BusyError(MiniSAMError):
    """Another MiniSAM action is running; this one was refused (nothing changed)."""


class BusyGuard:
    """Lets one action run at a time: ``with guard("loading model default"): ...``.

    A second ``with`` while the first is running, from the same thread (a Qt event processed inside the
    first action) or another one, raises :class:`BusyError` at once, naming what is running.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._task: str | None = None
        self._since = 0.0

    @property
    def task(self) -> str | None:
        """What is running now (None: nothing)."""
        return self._task

    @contextmanager
    def __call__(self, task: str) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            running = self._task or "with another action"
            seconds = max(0.0, self._clock() - self._since)
            raise BusyError(
                f"MiniSAM is busy {running} (for {seconds:.0f} s): wait until it has finished, "
                f"then try again"
            )
        self._task, self._since = task, self._clock()
        try:
            yield
        finally:
            self._task = None
            self._lock.release()


def run_in_background(
    work: Callable[[], T],
    pump: Callable[[], object] | None = None,
    interval: float = PUMP_SECONDS,
    name: str = "MiniSAM",
) -> T:
    """``work()`` on a worker thread; the calling thread calls ``pump()`` every ``interval`` s meanwhile.

    Returns what ``work`` returned, or raises what it raised, in the calling thread. Without ``pump`` the
    work runs in the calling thread. ``pump`` must not start another guarded action (it is called while
    the caller holds its :class:`BusyGuard`; the guard refuses one if an event handler tries).
    """
    if pump is None:
        return work()
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    while True:
        worker.join(interval)  # waits without the GIL: the worker runs at full speed
        if not worker.is_alive():
            break
        pump()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
