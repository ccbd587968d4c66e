"""Serving many searches at once: batched encoders, grouped vector searches, a query cache.

One `Serving` per process (built on first use by `Services.serving`):
- a text batcher and an image batcher per encoder: concurrent queries are
  encoded in one forward pass (`operations.batching`), behind a bounded queue
  that sheds load with `Overloaded` (503 + Retry-After);
- one vector-search batcher: concurrent searches that agree on (collection,
  filter, top_k) go to Milvus as one search with nq > 1, in `SEARCH_THREADS`
  concurrent calls; the rest go one by one. `min_score` is applied per caller
  afterwards, so it does not split groups;
- the query cache: a repeated query text skips the encoder entirely;
- the result cache (`operations.result_cache`): a repeated query vector skips
  the vector search too;
- admission: at most `MAX_IN_FLIGHT` searches are in progress at once; one
  more is refused with `Overloaded` on arrival, before it costs anything, so
  past the limit the answer is a fast 503 rather than a long wait (a search
  refused after waiting for its encode would have spent the time anyway).

Everything is built on the `Encoder` protocol, so it serves any backend.
`BATCH_WINDOW_MS=0` turns batching (and grouping) off: one item per call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from typing import Any, cast

import numpy as np

from config.settings import Settings
from operations import metrics
from operations.batching import MicroBatcher, Timed
from operations.domain import SearchFilter
from operations.encoding.base import Encoder, on_every_core
from operations.errors import Overloaded
from operations.query_cache import QueryCache, encoder_identity
from operations.result_cache import ResultCache
from operations.stores.vector_base import VectorStore


class Serving:
    """Batchers and the query cache of one process (see the module docstring)."""

    def __init__(self, settings: Settings, vectors: VectorStore) -> None:
        self.settings = settings
        self.vectors = vectors
        self.cache = QueryCache(settings.query_cache_size)
        self.results = ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
        self.max_in_flight = settings.max_in_flight
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._spread_lone_query = settings.encoder_spread_lone_query
        self.refused = 0
        self._window_s = settings.batch_window_ms / 1000
        self._deadline_s = settings.queue_timeout_ms / 1000
        self._lock = threading.Lock()
        self._text: dict[tuple, MicroBatcher] = {}
        self._image: dict[tuple, MicroBatcher] = {}
        self.search_batcher = MicroBatcher(
            "vector search",
            self._run_search,
            max_batch=settings.max_batch,
            window_s=self._window_s,
            # Searches that passed the encoders are not refused for their
            # number alone: the encoder queues in front already bound them.
            queue_limit=max(settings.queue_limit * 4, settings.max_batch),
            deadline_s=self._deadline_s,
            workers=settings.search_threads,
        )

    # -- admission ------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """One search in progress; `Overloaded` at once when MAX_IN_FLIGHT are."""
        with self._in_flight_lock:
            if self._in_flight >= self.max_in_flight:
                self.refused += 1
                metrics.ADMISSION_REFUSED.inc()
                raise Overloaded(
                    f"{self._in_flight} searches are in progress; the limit is {self.max_in_flight}",
                    retry_after_s=1,
                )
            self._in_flight += 1
        metrics.SEARCHES_IN_FLIGHT.inc()
        try:
            yield
        finally:
            metrics.SEARCHES_IN_FLIGHT.dec()
            with self._in_flight_lock:
                self._in_flight -= 1

    def alone(self) -> bool:
        """At most one search is in progress (the caller's own), so the cores are its to use
        (and ENCODER_SPREAD_LONE_QUERY lets it)."""
        with self._in_flight_lock:
            return self._spread_lone_query and self._in_flight <= 1

    # -- encoders -------------------------------------------------------------
    def _batcher(self, table: dict, kind: str, encoder: Encoder) -> MicroBatcher:
        key = encoder_identity(encoder)
        with self._lock:
            batcher = table.get(key)
            if batcher is None:
                run = _encode_texts(encoder, self.alone) if kind == "text" else _encode_images(encoder)
                batcher = table[key] = MicroBatcher(
                    f"{encoder.model_name} {kind} encoder",
                    run,
                    max_batch=self.settings.max_batch,
                    window_s=self._window_s,
                    queue_limit=self.settings.queue_limit,
                    deadline_s=self._deadline_s,
                )
            return batcher

    def encode_text(self, encoder: Encoder, text: str) -> Future | Timed:
        """The query's vector: a `Timed` at once on a cache hit, else a future of one."""
        key = self.cache.key(encoder, text)
        cached = self.cache.get(key)
        if cached is not None:
            return Timed(cached, 0.0, 0.0, 0)
        future = self._batcher(self._text, "text", encoder).submit(text)
        future.add_done_callback(lambda f: self._remember(key, f))
        return future

    def _remember(self, key: tuple, future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.cache.put(key, future.result().value)

    def encode_image(self, encoder: Encoder, image: Any) -> Future:
        """A future of the image's vector (`Timed`)."""
        return self._batcher(self._image, "image", encoder).submit(image)

    # -- vector search ----------------------------------------------------------
    def search(
        self, collection: str, vector: np.ndarray, top_k: int, flt: SearchFilter | None
    ) -> Future | Timed:
        """This vector's hits: a `Timed` at once from the result cache, else a future of one,
        searched with others of the same group."""
        if not self.results.enabled:
            return self.search_batcher.submit(vector, key=(collection, top_k, flt))
        key = self.results.key(collection, vector, top_k, flt)
        # Read before the search starts: a write that begins later advances it, so
        # this result is never reused past that write (operations.result_cache).
        generation = self.vectors.write_generation(collection)
        cached = self.results.get(key, generation)
        if cached is not None:
            return Timed(cached, 0.0, 0.0, 0)
        future = self.search_batcher.submit(vector, key=(collection, top_k, flt))
        future.add_done_callback(lambda f: self._remember_hits(key, generation, f))
        return future

    def _remember_hits(self, key: Hashable, generation: int, future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.results.put(key, generation, future.result().value)

    def _run_search(self, key: Hashable, vectors: list[np.ndarray]) -> list:
        collection, top_k, flt = cast(tuple[str, int, SearchFilter | None], key)
        return self.vectors.search(collection, np.stack(vectors), top_k, flt)

    # -- lifecycle ------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            encoders = {b.name: b.stats() for b in (*self._text.values(), *self._image.values())}
        with self._in_flight_lock:
            admission = {"in_flight": self._in_flight, "limit": self.max_in_flight, "refused": self.refused}
        return {
            "admission": admission,
            "query_cache": self.cache.stats(),
            "result_cache": self.results.stats(),
            "encoders": encoders,
            "vector_search": self.search_batcher.stats(),
        }

    def close(self) -> None:
        with self._lock:
            batchers = [*self._text.values(), *self._image.values()]
        for b in (*batchers, self.search_batcher):
            b.close()


# A text pass is padded to its longest query: a large batch is cut, by
# length, into passes of at most this many, so short queries do not pay for
# the long one's tokens (the features do not depend on the padding).
TEXT_PASS = 16


def _encode_texts(encoder: Encoder, alone: Callable[[], bool]):
    def run(_key: Hashable, texts: list[str]) -> list[np.ndarray]:
        # The same text twice in one batch is encoded once.
        unique = sorted(dict.fromkeys(texts), key=len)
        by_text: dict[str, np.ndarray] = {}
        # The only search in progress may encode on every core: Milvus, SQL and
        # the other requests are idle (operations.encoding.base.on_every_core).
        with on_every_core(len(unique) == 1 and alone()):
            for start in range(0, len(unique), TEXT_PASS):
                part = unique[start : start + TEXT_PASS]
                by_text.update(zip(part, encoder.encode_texts(part), strict=True))
        return [by_text[t] for t in texts]

    return run


def _encode_images(encoder: Encoder):
    def run(_key: Hashable, images: list) -> list[np.ndarray]:
        return list(encoder.encode_images(images))

    return run
