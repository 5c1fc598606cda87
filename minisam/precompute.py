"""Slice embeddings computed ahead of time on one worker thread, so a click costs a decoder pass only.

:class:`Precompute` keeps a plan of slices to embed, nearest to where the user works first: the slice being
looked at and its neighbours (:meth:`Precompute.plan` from ``VolumeSession.focus``), or the next slices of a
propagation. One worker thread (a one-thread ``ThreadPoolExecutor``) embeds the plan in order into the
session's :class:`EmbeddingCache`:

- **one computation per slice**: every slice queued or being embedded has one ``Future``; a request
  (:meth:`Precompute.get`) for it waits for that future, a request for a slice not queued puts it at the
  front of the plan, so a click waits at most for the embedding in flight and never starts a duplicate;
- **bounded**: the plan holds at most ``max_planned`` slices, and no more than fit in the cache's byte
  budget besides the focus slice, which is pinned there (never evicted);
- **cancellable**: a new plan drops what the old one queued, :meth:`Precompute.cancel` drops all of it and
  :meth:`Precompute.close` (volume changed, session released) also discards the embedding in flight;
- **errors are not lost**: an embedding that failed with nobody waiting keeps its error in its future, and
  the next request for that slice raises it (the one after that computes again).

The encoder itself runs one call at a time (``SamEngine.embed`` holds a lock), so a click computed while
the worker embeds a neighbour waits for that one call.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from minisam.embedding_cache import EmbeddingCache
from minisam.engine import SliceEmbedding

__all__ = ["DEFAULT_MAX_PLANNED", "Precompute"]

DEFAULT_MAX_PLANNED = 8  # slices queued at most (a focus and its neighbours, a propagation's next)
PUMP_SECONDS = 0.05  # how often a waiting caller with a pump (a GUI thread) processes events


class Precompute:
    """Embeds planned slices on one worker thread into ``cache``; see the module docstring.

    Arguments:
      encode: computes the embedding of a key (runs on the worker thread, or on the caller's after
        :meth:`close`).
      cache: where embeddings go (its byte budget bounds the plan; the focus key is pinned in it).
      max_planned: at most this many keys are queued (the focus included).
    """

    def __init__(
        self,
        encode: Callable[[Hashable], SliceEmbedding],
        cache: EmbeddingCache,
        max_planned: int = DEFAULT_MAX_PLANNED,
        name: str = "MiniSAM precompute",
    ) -> None:
        self.cache = cache
        self.max_planned = max_planned
        self.encoded = 0  # encoder calls made by the worker
        self._encode = encode
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._futures: dict[Hashable, Future] = {}  # queued, running, or failed with nobody waiting
        self._queue: deque[Hashable] = deque()  # keys not started, in order
        self._requested: set[Hashable] = set()  # keys a get() waits for (kept by a new plan)
        self._running: Hashable | None = None
        self._draining = False
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._pinned: Hashable | None = None
        self._item_bytes: int | None = None  # size of one embedding, known after the first

    @property
    def queued(self) -> tuple[Hashable, ...]:
        """Keys waiting for the worker, next first."""
        with self._lock:
            return tuple(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the worker has nothing queued or running; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)

    def plan(self, keys: Sequence[Hashable], pin: Hashable | None = None) -> None:
        """Embed ``keys`` in this order from now on, instead of what was queued (never blocks).

        Keys already cached are refreshed in the cache's LRU order; a key being embedded is not queued
        again; keys a :meth:`get` waits for stay first. ``pin`` (the slice being worked on) is pinned in
        the cache instead of the previous one. Only the first keys that fit are kept: ``max_planned``,
        and what the cache's byte budget holds besides the pinned key.
        """
        with self._lock:
            if self._closed:
                return
            if pin is not None and pin != self._pinned:
                if self._pinned is not None:
                    self.cache.unpin(self._pinned)
                self.cache.pin(pin)
                self._pinned = pin
            limit = self.max_planned
            if self._item_bytes:
                fits = self.cache.max_bytes // self._item_bytes - len(self._requested)
                limit = min(limit, max(0, fits - (0 if pin in keys else 1)))
            window = list(dict.fromkeys(keys))[:limit]
            wanted = [
                key
                for key in window
                if not self.cache.touch(key)
                and key != self._running
                and not (key in self._futures and self._futures[key].done())  # failed, kept
            ]
            kept = [key for key in self._queue if key in self._requested]
            for key in self._queue:
                if key not in self._requested and key not in wanted:
                    self._futures.pop(key).cancel()
            self._queue = deque(kept + [key for key in wanted if key not in kept])
            for key in wanted:
                self._futures.setdefault(key, Future())
            self._start()

    def get(
        self,
        key: Hashable,
        pump: Callable[[], object] | None = None,
        interval: float = PUMP_SECONDS,
    ) -> SliceEmbedding:
        """The embedding of ``key``: cached, or the one being computed, or computed next.

        With ``pump``, the caller waits in slices of ``interval`` seconds and calls ``pump()`` between
        them (a GUI thread processing events). Raises what the encoder raised for this key, also when
        that happened on the worker before anyone asked.
        """
        with self._lock:
            if self._closed:
                future = None
            else:
                cached = self.cache.get(key)
                if cached is not None:
                    return cached
                future = self._futures.get(key)
                if future is not None and future.done():  # a failure kept for this request
                    del self._futures[key]
                elif future is None:
                    future = self._futures[key] = Future()
                    self._queue.appendleft(key)
                    self._requested.add(key)
                    self._start()
                else:
                    self._requested.add(key)
                    if key in self._queue:  # queued behind neighbours: it is wanted now
                        self._queue.remove(key)
                        self._queue.appendleft(key)
        if future is None:  # closed: compute here, keep nothing
            return self._encode(key)
        return _result(future, pump, interval)

    def cancel(self) -> None:
        """Drop every queued key (futures cancelled); the embedding in flight still goes to the cache."""
        with self._lock:
            self._drop_queue()

    def close(self, wait: bool = False) -> None:
        """Stop for good: drop the queue, discard the embedding in flight, unpin; with ``wait``, return
        after the worker has stopped. Later :meth:`get` calls compute in the caller's thread."""
        with self._lock:
            self._closed = True
            self._drop_queue()
            if self._pinned is not None:
                self.cache.unpin(self._pinned)
                self._pinned = None
        # The drain loop, if submitted, still runs once and sees the flag (so the idle event is set).
        self._executor.shutdown(wait=wait)

    def _drop_queue(self) -> None:
        for key in self._queue:
            self._futures.pop(key).cancel()
            self._requested.discard(key)
        self._queue.clear()

    def _start(self) -> None:
        """Submit the drain loop unless it runs (call with the lock held)."""
        if self._queue and not self._draining and not self._closed:
            self._draining = True
            self._idle.clear()
            self._executor.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._queue:
                    self._draining, self._running = False, None
                    self._idle.set()
                    return
                key = self._queue.popleft()
                future = self._futures[key]
                self._running = key
                self.encoded += 1
            future.set_running_or_notify_cancel()
            try:
                embedding = self._encode(key)
            except BaseException as error:  # noqa: BLE001 - kept for the next request of this key
                with self._lock:
                    self._running = None
                    if key in self._requested or self._closed:
                        self._futures.pop(key, None)  # a waiting get() raises it now
                    self._requested.discard(key)
                future.set_exception(error)
                continue
            with self._lock:
                self._running = None
                self._item_bytes = embedding.nbytes
                if not self._closed:
                    self.cache.put(key, embedding)
                self._futures.pop(key, None)
                self._requested.discard(key)
            future.set_result(embedding)


def _result(future: Future, pump: Callable[[], object] | None, interval: float) -> SliceEmbedding:
    if pump is None:
        return future.result()
    while True:
        try:
            return future.result(timeout=interval)  # waits without the GIL
        except FutureTimeout:
            pump()
