"""One deadline per store call, shared by everything the call does.

A store call (a search, a query, a batch insert) waits for its store at most the
store's timeout in total: the SQL pool's wait for a free connection, its
pre-ping, a reconnect, pymilvus' retries and the loading of a collection before
a search all draw on the same deadline. Calls made inside a call (a search asks
for the collection's description first) share the outer call's deadline.

Inside an HTTP request (`request_scope`, opened by the app's middleware) the
timeout is the request's budget for each store: the time its calls to a store
have waited so far is taken off the next call's deadline, and a store that
already failed is not waited for again. So a request that makes several calls
to a store that has turned slow (a check that the collection exists, then the
write), or tidies up after a failure (an add taking its rows back), still ends
within about one timeout. Time spent elsewhere (encoding, queueing) is not
counted. Outside a request (jobs, the command line) each call has its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from operations.errors import DependencyUnavailable


@dataclass(frozen=True)
class Deadline:
    """The moment (time.monotonic) a call to `store` must have finished by."""

    store: str
    at: float
    timeout_s: float

    def left(self) -> float:
        return self.at - time.monotonic()

    def left_or_raise(self) -> float:
        """Seconds left; DependencyUnavailable when none are."""
        left = self.left()
        if left <= 0:
            raise DependencyUnavailable(self.store, f"no answer within {self.timeout_s:g} s")
        return left


# The deadline of each store's outermost call in progress, in this thread or task.
_active: ContextVar[dict[str, Deadline] | None] = ContextVar("store_deadlines", default=None)


class _RequestBudget:
    """What one request has spent on each store so far."""

    def __init__(self) -> None:
        self.waited: dict[str, float] = {}
        self.failed: set[str] = set()
        # A request's helper threads (an add's prepare stage) share its budget.
        self.lock = threading.Lock()


_request: ContextVar[_RequestBudget | None] = ContextVar("store_budget_of_request", default=None)


def current(store: str) -> Deadline | None:
    """The deadline of the call to `store` in progress here, if any."""
    return (_active.get() or {}).get(store)


def seconds_left(store: str, default: float) -> float:
    """Seconds left of the call to `store` in progress (at least 1 ms), else `default`."""
    d = current(store)
    return default if d is None else max(0.001, d.left())


@contextlib.contextmanager
def store_call(store: str, timeout_s: float, *, own: bool = False) -> Iterator[Deadline]:
    """A call to `store` that must end within `timeout_s`; nested calls share its deadline.

    `own`: this call gets its own full deadline, even inside another call of the
    same store or after the request spent its budget (for the few calls that
    are allowed to wait longer, e.g. a bulk flush or an index build).
    """
    active = _active.get() or {}
    if store in active and not own:
        yield active[store]
        return
    budget = _request.get()
    allowed = timeout_s
    if budget is not None and not own:
        if store in budget.failed:
            raise DependencyUnavailable(store, "it did not answer earlier in this request")
        allowed = timeout_s - budget.waited.get(store, 0.0)
        if allowed <= 0:
            raise DependencyUnavailable(store, f"this request already waited {timeout_s:g} s for it")
    started = time.monotonic()
    d = Deadline(store, started + allowed, timeout_s)
    token = _active.set({**active, store: d})
    try:
        yield d
    except DependencyUnavailable as exc:
        if budget is not None and exc.dependency == store:
            with budget.lock:
                budget.failed.add(store)
        raise
    finally:
        _active.reset(token)
        if budget is not None and not own:
            with budget.lock:
                budget.waited[store] = budget.waited.get(store, 0.0) + time.monotonic() - started


@contextlib.contextmanager
def request_scope() -> Iterator[None]:
    """Scope of one HTTP request (see the module docstring)."""
    token = _request.set(_RequestBudget())
    try:
        yield
    finally:
        _request.reset(token)
