"""An LRU of vector-search results, keyed by (collection, query vector, top_k, filter).

A repeated query (the same text, hence the same cached embedding; the same
stored image) skips the vector search. Two rules keep it from serving stale
results:

- Writes made by this process: every entry records the collection's write
  generation (`VectorStore.write_generation`) read *before* its search
  started; the stores advance it when a write starts, when it ends and when it
  becomes visible, so an entry whose search could have missed a write of this
  process never matches again. A process's own adds and deletes therefore
  show at once, as without the cache.
- Writes made by other processes (other replicas, a load from the command
  line): an entry lives at most `ttl_s` seconds (RESULT_CACHE_TTL_S), which
  adds at most that much to the time a write made elsewhere takes to show.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from operations import metrics
from operations.domain import Hit


class ResultCache:
    """Thread-safe LRU of search results; `capacity` 0 or `ttl_s` 0 = off."""

    def __init__(self, capacity: int, ttl_s: float) -> None:
        self.capacity = max(0, int(capacity)) if ttl_s > 0 else 0
        self.ttl_s = ttl_s
        # key -> (write generation, expiry on time.monotonic, hits)
        self._items: OrderedDict[Hashable, tuple[int, float, tuple[Hit, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._hit = metrics.RESULT_CACHE.labels("hit")
        self._miss = metrics.RESULT_CACHE.labels("miss")

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @staticmethod
    def key(collection: str, vector: np.ndarray, top_k: int, flt: Hashable) -> Hashable:
        digest = hashlib.blake2b(np.ascontiguousarray(vector, dtype=np.float32).tobytes(), digest_size=16)
        return (collection, digest.digest(), top_k, flt)

    def get(self, key: Hashable, generation: int) -> list[Hit] | None:
        if not self.enabled:
            return None
        with self._lock:
            entry = self._items.get(key)
            if entry is None or entry[0] != generation or entry[1] <= time.monotonic():
                if entry is not None:
                    del self._items[key]
                self.misses += 1
                self._miss.inc()
                return None
            self._items.move_to_end(key)
            self.hits += 1
            self._hit.inc()
            return list(entry[2])

    def put(self, key: Hashable, generation: int, hits: list[Hit]) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._items[key] = (generation, time.monotonic() + self.ttl_s, tuple(hits))
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {
                "capacity": self.capacity,
                "ttl_s": self.ttl_s,
                "entries": len(self._items),
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": round(self.hits / total, 4) if total else 0.0,
            }
