"""Vectors whose write may have landed after their add failed, deleted once Milvus answers.

A vector write that times out has an unknown outcome: a frozen Milvus server
holds the request and applies it when it runs again, seconds after the add
answered 503 and took its SQL rows back. Those ids would be vectors without
rows (counts that disagree, hits with nothing to show). So the add hands
them here, and a background thread deletes them as soon as the server answers
(deleting an id that was never written is harmless). The queue lives in this
process: a process killed before the server returns leaves such vectors,
which searches skip (the SQL row is the source of truth for what exists).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from operations.errors import NotFound, ServiceError
from operations.stores.vector_base import VectorStore

log = logging.getLogger(__name__)

# Seconds between attempts while Milvus does not answer.
RETRY_S = 1.0
# Ids kept at most; past this the oldest are dropped with a warning (a long outage
# under a heavy add load), since memory must stay bounded.
MAX_PENDING = 1_000_000


class VectorCleanup:
    """A background queue of (collection, ids) to delete from the vector store."""

    def __init__(self, vectors: VectorStore, retry_s: float = RETRY_S) -> None:
        self._vectors = vectors
        self._retry_s = retry_s
        self._pending: dict[str, set[int]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.deleted = 0

    def submit(self, collection: str, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._cond:
            if self._closed:
                return
            self._pending.setdefault(collection, set()).update(int(i) for i in ids)
            self._trim()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="vector-cleanup", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return sum(len(ids) for ids in self._pending.values())

    def _trim(self) -> None:
        over = sum(len(ids) for ids in self._pending.values()) - MAX_PENDING
        for collection in list(self._pending):
            if over <= 0:
                break
            dropped = min(over, len(self._pending[collection]))
            for _ in range(dropped):
                self._pending[collection].pop()
            over -= dropped
            log.warning("vector cleanup: %d ids of %s dropped (queue full)", dropped, collection)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                collection, ids = next(iter(self._pending.items()))
                batch = sorted(ids)
            try:
                self._vectors.delete(collection, batch, visible=False)
            except NotFound:
                pass  # the collection is gone, and its vectors with it
            except ServiceError as exc:
                log.info("vector cleanup of %d ids in %s waits: %s", len(batch), collection, exc.message)
                with self._cond:
                    self._cond.wait(self._retry_s)
                continue
            except Exception:
                log.exception("vector cleanup of %s failed; retrying", collection)
                with self._cond:
                    self._cond.wait(self._retry_s)
                continue
            with self._cond:
                left = self._pending.get(collection, set()) - set(batch)
                if left:
                    self._pending[collection] = left
                else:
                    self._pending.pop(collection, None)
                self.deleted += len(batch)
            log.info("vector cleanup: deleted %d vectors of a failed add from %s", len(batch), collection)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            left = sum(len(ids) for ids in self._pending.values())
            self._cond.notify_all()
        if left:
            log.warning("vector cleanup: %d ids not deleted at shutdown", left)
