"""A background queue of deletes that retries while its store does not answer.

The failed-add paths hand it what they could not remove at once (the vector
cleanup and the row cleanup build on it). The queue lives in this process,
bounded in size; a process killed with work pending leaves it to a repair.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable

from operations.errors import NotFound, ServiceError

log = logging.getLogger(__name__)

# Seconds between attempts while the store does not answer.
RETRY_S = 1.0
# Keys kept at most; past this the oldest are dropped with a warning (a long outage
# under a heavy add load), since memory must stay bounded.
MAX_PENDING = 1_000_000


# Which making of a collection pending keys belong to (VectorStore.incarnation): None where
# there is no such identity (Milvus Lite) or it was not known when they were submitted.
Incarnation = int | None


class DeferredDeletes:
    """Pending keys per collection, deleted by `_delete` on a background thread.

    `_delete` raises ServiceError while its store is unavailable (the batch is
    retried after `retry_s`) and NotFound once the collection is gone (the
    batch is dropped: the collection took its data with it).

    Keys are held with the incarnation of the collection they were submitted
    for. Before a batch is deleted, `incarnation_now` (when given) says which
    making of the collection holds the name now: another one means the
    collection was dropped and made again, possibly by another process (an
    API replica), whose new images may hold the same ids, so the batch is
    dropped. A drop in this process also `forget`s at once.
    """

    label = "deferred delete"  # the subject of its log lines

    def __init__(
        self, retry_s: float = RETRY_S, incarnation_now: Callable[[str], Incarnation] | None = None
    ) -> None:
        self._retry_s = retry_s
        self._incarnation_now = incarnation_now
        self._pending: dict[tuple[str, Incarnation], set[Hashable]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._busy: str | None = None  # the collection whose batch is being deleted now
        self.deleted = 0  # keys handled, for tests and stats

    def _delete(self, collection: str, batch: list, incarnation: Incarnation) -> None:
        raise NotImplementedError

    def _submit(self, collection: str, keys: Iterable[Hashable], incarnation: Incarnation = None) -> None:
        keys = set(keys)
        if not keys:
            return
        with self._cond:
            if self._closed:
                return
            self._pending.setdefault((collection, incarnation), set()).update(keys)
            self._trim()
            if self._thread is None:
                name = self.label.replace(" ", "-")
                self._thread = threading.Thread(target=self._work, name=name, daemon=True)
                self._thread.start()
            self._cond.notify_all()  # the worker, not only a `forget` waiting on the same condition

    def forget(self, collection: str) -> int:
        """Drop what is pending for `collection` and wait out a delete of it under way.

        For a collection dropped or made anew under the same name: its image ids start
        again, so keys of the one before must not reach it. Returns the keys dropped.
        """
        with self._cond:
            dropped = sum(len(self._pending.pop(k)) for k in [k for k in self._pending if k[0] == collection])
            while self._busy == collection:
                self._cond.wait()
        if dropped:
            log.info("%s: %d keys of %s dropped with the collection", self.label, dropped, collection)
        return dropped

    def pending(self) -> int:
        with self._cond:
            return sum(len(keys) for keys in self._pending.values())

    def _trim(self) -> None:
        over = sum(len(keys) for keys in self._pending.values()) - MAX_PENDING
        for key in list(self._pending):
            if over <= 0:
                break
            dropped = min(over, len(self._pending[key]))
            for _ in range(dropped):
                self._pending[key].pop()
            over -= dropped
            log.warning("%s: %d keys of %s dropped (queue full)", self.label, dropped, key[0])

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key, keys = next(iter(self._pending.items()))
                collection, incarnation = key
                batch = sorted(keys, key=repr)  # a stable order for the logs and the store
                self._busy = collection
            try:
                if self._made_again(collection, incarnation):
                    log.info(
                        "%s: %d keys of %s dropped: the collection was made again since",
                        self.label,
                        len(batch),
                        collection,
                    )
                else:
                    self._delete(collection, batch, incarnation)
            except NotFound:
                pass  # the collection is gone, and its data with it
            except ServiceError as exc:
                log.info("%s of %d keys in %s waits: %s", self.label, len(batch), collection, exc.message)
                self._retry_later()
                continue
            except Exception:
                log.exception("%s of %s failed; retrying", self.label, collection)
                self._retry_later()
                continue
            with self._cond:
                self._busy = None
                self._cond.notify_all()
                left = self._pending.get(key, set()) - set(batch)
                if left:
                    self._pending[key] = left
                else:
                    self._pending.pop(key, None)
                self.deleted += len(batch)

    def _made_again(self, collection: str, incarnation: Incarnation) -> bool:
        """Whether the name now holds another making of the collection than the keys' (raises
        ServiceError while the store does not answer, NotFound once the collection is gone)."""
        if incarnation is None or self._incarnation_now is None:
            return False
        return self._incarnation_now(collection) != incarnation

    def _retry_later(self) -> None:
        with self._cond:
            self._busy = None
            self._cond.notify_all()
            self._cond.wait(self._retry_s)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            left = sum(len(keys) for keys in self._pending.values())
            self._cond.notify_all()
        if left:
            log.warning("%s: %d keys not deleted at shutdown", self.label, left)
