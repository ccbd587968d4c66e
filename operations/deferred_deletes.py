"""A background queue of deletes that retries while its store does not answer.

The failed-add paths hand it what they could not remove at once (the vector
cleanup and the row cleanup build on it). The queue lives in this process,
bounded in size; a process killed with work pending leaves it to a repair.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterable

from operations.errors import NotFound, ServiceError

log = logging.getLogger(__name__)

# Seconds between attempts while the store does not answer.
RETRY_S = 1.0
# Keys kept at most; past this the oldest are dropped with a warning (a long outage
# under a heavy add load), since memory must stay bounded.
MAX_PENDING = 1_000_000


class DeferredDeletes:
    """Pending keys per collection, deleted by `_delete` on a background thread.

    `_delete` raises ServiceError while its store is unavailable (the batch is
    retried after `retry_s`) and NotFound once the collection is gone (the
    batch is dropped: the collection took its data with it).
    """

    label = "deferred delete"  # the subject of its log lines

    def __init__(self, retry_s: float = RETRY_S) -> None:
        self._retry_s = retry_s
        self._pending: dict[str, set[Hashable]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._busy: str | None = None  # the collection whose batch is being deleted now
        self.deleted = 0  # keys handled, for tests and stats

    def _delete(self, collection: str, batch: list) -> None:
        raise NotImplementedError

    def _submit(self, collection: str, keys: Iterable[Hashable]) -> None:
        keys = set(keys)
        if not keys:
            return
        with self._cond:
            if self._closed:
                return
            self._pending.setdefault(collection, set()).update(keys)
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
            dropped = len(self._pending.pop(collection, ()))
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
        for collection in list(self._pending):
            if over <= 0:
                break
            dropped = min(over, len(self._pending[collection]))
            for _ in range(dropped):
                self._pending[collection].pop()
            over -= dropped
            log.warning("%s: %d keys of %s dropped (queue full)", self.label, dropped, collection)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                collection, keys = next(iter(self._pending.items()))
                batch = sorted(keys, key=repr)  # a stable order for the logs and the store
                self._busy = collection
            try:
                self._delete(collection, batch)
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
                left = self._pending.get(collection, set()) - set(batch)
                if left:
                    self._pending[collection] = left
                else:
                    self._pending.pop(collection, None)
                self.deleted += len(batch)

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
