"""An outage in the log: one line when a store goes down, one when it is back.

Every failed call during an outage would otherwise log its own line (pymilvus
even logs a traceback per failed call), burying the one fact an operator
needs: when the store went away, why, when it came back and how many calls
failed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

from operations import metrics


class OutageLog:
    """Tracks one store's state from the outcome of its calls.

    A store that answers again is declared back once it has answered for
    `settle_s` without a failure: a server that has just restarted often
    answers some calls and times out on others for a while, and that is still
    the same outage, not a new one per slow call.
    """

    def __init__(self, store: str, logger: logging.Logger, settle_s: float = 10.0) -> None:
        self.store = store
        self.settle_s = settle_s
        self._log = logger
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._answering_since: float | None = None
        self._failed = 0
        self._errors = metrics.STORE_ERRORS.labels(store)
        self._outages = metrics.STORE_OUTAGES.labels(store)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, reason: str) -> None:
        """A call failed because the store could not be reached or did not answer."""
        self._errors.inc()
        with self._lock:
            self._failed += 1
            self._answering_since = None
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        self._outages.inc()
        self._log.warning("%s is down: %s", self.store, reason)

    def succeeded(self) -> None:
        """A call got its answer."""
        if self._down_since is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._down_since is None:
                return
            now = time.monotonic()
            if self._answering_since is None:
                self._answering_since = now
            if now - self._answering_since < self.settle_s:
                return
            lasted, failed = self._answering_since - self._down_since, self._failed
            self._down_since, self._answering_since, self._failed = None, None, 0
        self._log.warning(
            "%s is back after %.1f s down; %d calls failed meanwhile", self.store, lasted, failed
        )
