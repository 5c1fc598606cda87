"""A memory-bounded LRU cache of slice embeddings keyed by (volume, axis, slice)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from minisam.engine import SliceEmbedding

DEFAULT_BUDGET_BYTES = 512 * 1024**2


class EmbeddingCache:
    """Least-recently-used store of :class:`SliceEmbedding` under a byte budget; thread-safe.

    The background precompute (:mod:`minisam.precompute`) inserts embeddings from its worker thread while
    clicks look them up, so lookups and inserts may race; a lock keeps the bookkeeping consistent. Pinned
    keys (the slice being worked on) are never evicted.
    """

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, SliceEmbedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._pinned: set[Hashable] = set()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> SliceEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: Hashable, embedding: SliceEmbedding) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key).nbytes
            self._items[key] = embedding
            self._bytes += embedding.nbytes
            # Oldest first, never a pinned item nor the newest (kept even if it alone exceeds the budget).
            victims = (k for k in list(self._items)[:-1] if k not in self._pinned)
            while self._bytes > self.max_bytes:
                victim = next(victims, None)
                if victim is None:
                    break
                self._bytes -= self._items.pop(victim).nbytes

    def touch(self, key: Hashable) -> bool:
        """Mark ``key`` as just used (it is evicted last) without counting a hit; whether it is held."""
        with self._lock:
            if key not in self._items:
                return False
            self._items.move_to_end(key)
            return True

    def pin(self, key: Hashable) -> None:
        """Never evict ``key`` (held now or put later) until :meth:`unpin`."""
        with self._lock:
            self._pinned.add(key)

    def unpin(self, key: Hashable) -> None:
        with self._lock:
            self._pinned.discard(key)

    def get_or_compute(
        self, key: Hashable, compute: Callable[[], SliceEmbedding]
    ) -> SliceEmbedding:
        """Return the cached embedding for ``key`` or compute, store and return it."""
        cached = self.get(key)
        if cached is not None:
            return cached
        embedding = compute()
        self.put(key, embedding)
        return embedding

    def clear(self) -> None:
        """Drop every embedding (pins stay)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
