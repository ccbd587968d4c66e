"""Micro-batching with a bounded queue: many callers, one call for their batch.

Callers `submit` one item and get a `concurrent.futures.Future`; a worker
thread takes queued items of one key (the oldest item's key), runs the batch
function once over all of them and hands each caller exactly its own result,
by position. Sync callers wait on `.result()`, async callers await
`asyncio.wrap_future(...)`, so waiting never holds a worker thread of the HTTP
server.

When a batch starts:
- A worker that becomes free takes everything of one key that is queued (up
  to `max_batch`) and runs it at once. Under load, requests queue while the
  previous batch runs, so batches form without any added wait.
- It waits up to `window_s` to fill a batch only while others are arriving
  (the previous batch held more than one item, or more than one is queued):
  concurrent clients whose answers came back together return within a few
  milliseconds of each other, and the wait lets them share one pass instead
  of the first going alone. A lone client finds the worker idle and its
  previous batch of one, so it never waits: a single client is not slower.
- `window_s == 0` turns batching off: one item per call, in arrival order
  (the baseline the bench compares against).

Load shedding: at most `queue_limit` items wait; one more is refused at once
with `Overloaded` (503 + Retry-After), and so is an item whose estimated
wait (queue length x recent batch time) exceeds its deadline. An item still
queued when its deadline passes is failed with `Overloaded` instead of being
run late.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from operations import metrics
from operations.errors import Overloaded

log = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


@dataclass
class Timed:
    """A batch result with how long its item waited and how long its batch ran."""

    value: Any
    queue_ms: float
    run_ms: float
    batch_size: int


@dataclass
class _Item:
    payload: Any
    key: Hashable
    enqueued: float
    deadline: float
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Gathers concurrent calls into batches (see the module docstring)."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch: int,
        window_s: float,
        queue_limit: int,
        deadline_s: float,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or queue_limit < 1 or workers < 1 or window_s < 0 or deadline_s <= 0:
            raise ValueError("max_batch, queue_limit, workers >= 1; window_s >= 0; deadline_s > 0")
        self.name = name
        self._run_batch = run_batch
        self.batching = window_s > 0
        self.max_batch = max_batch if self.batching else 1
        self.window_s = window_s
        self.queue_limit = queue_limit
        self.deadline_s = deadline_s
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._last_batch_size = 0
        # Recent seconds per batch (exponential average), for the wait estimate.
        self._batch_s = 0.0
        self._busy = 0
        self.counts = {"submitted": 0, "batches": 0, "items": 0, "shed_full": 0, "shed_deadline": 0}
        self._queue_depth = metrics.QUEUE_DEPTH.labels(name)
        self._queue_depth.set(0)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._batch_run = metrics.BATCH_RUN.labels(name)
        self._shed_full = metrics.SHED.labels(name, "queue_full")
        self._shed_deadline = metrics.SHED.labels(name, "deadline")
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{name}-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # -- callers ------------------------------------------------------------
    def submit(self, payload: Any, key: Hashable = None, deadline_s: float | None = None) -> Future:
        """Queue one item; its future resolves to `Timed(result, ...)` or raises.

        Raises `Overloaded` at once when the queue is full or the item could
        not start within its deadline.
        """
        now = time.monotonic()
        deadline = now + (self.deadline_s if deadline_s is None else deadline_s)
        item = _Item(payload, key, now, deadline)
        with self._cond:
            if self._closed:
                raise Overloaded(f"{self.name}: shutting down")
            if len(self._queue) >= self.queue_limit:
                self.counts["shed_full"] += 1
                self._shed_full.inc()
                raise Overloaded(
                    f"{self.name}: {len(self._queue)} requests already waiting (limit {self.queue_limit})",
                    queued=len(self._queue),
                    limit=self.queue_limit,
                )
            estimate = self._estimated_wait_s()
            if now + estimate > deadline:
                self.counts["shed_deadline"] += 1
                self._shed_deadline.inc()
                raise Overloaded(
                    f"{self.name}: the estimated wait ({estimate * 1000:.0f} ms) is beyond the deadline",
                    estimated_wait_ms=round(estimate * 1000),
                )
            self._queue.append(item)
            self._queue_depth.set(len(self._queue))
            self.counts["submitted"] += 1
            self._cond.notify()
        return item.future

    def _estimated_wait_s(self) -> float:
        # Batches ahead of this item, each taking about the recent batch time;
        # the workers run that many at once.
        ahead = math.ceil((len(self._queue) + 1) / self.max_batch) + (1 if self._busy else 0) - 1
        return max(ahead, 0) * self._batch_s / len(self._threads)

    def stats(self) -> dict:
        """Counters and the current queue length (for the stats endpoint)."""
        with self._cond:
            return {
                **self.counts,
                "queued": len(self._queue),
                "mean_batch": round(self.counts["items"] / self.counts["batches"], 2)
                if self.counts["batches"]
                else 0.0,
                "batch_ms": round(self._batch_s * 1000, 2),
                "max_batch": self.max_batch,
                "window_ms": round(self.window_s * 1000, 2),
                "queue_limit": self.queue_limit,
            }

    def close(self) -> None:
        """Stop the workers; items still queued fail with `Overloaded`."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._queue_depth.set(0)
            self._cond.notify_all()
        for item in pending:
            _fail(item, Overloaded(f"{self.name}: shutting down"))

    # -- workers ------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            key = self._queue[0].key
            batch = self._pull(key, self.max_batch)
            others_arriving = self._last_batch_size > 1 or len(batch) > 1
            if self.batching and len(batch) < self.max_batch and others_arriving:
                until = batch[0].enqueued + self.window_s
                while len(batch) < self.max_batch and not self._closed:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    batch += self._pull(key, self.max_batch - len(batch))
            self._queue_depth.set(len(self._queue))
            self._busy += 1
            return batch

    def _pull(self, key: Hashable, n: int) -> list[_Item]:
        # Items of `key` in arrival order; other keys keep their places.
        taken: list[_Item] = []
        kept: deque[_Item] = deque()
        while self._queue and len(taken) < n:
            item = self._queue.popleft()
            (taken if item.key == key else kept).append(item)
        kept.extend(self._queue)
        self._queue = kept
        return taken

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy -= 1

    def _run(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        live = []
        for item in batch:
            if item.future.set_running_or_notify_cancel() is False:
                continue
            if started > item.deadline:
                self.counts["shed_deadline"] += 1
                self._shed_deadline.inc()
                _fail(
                    item,
                    Overloaded(
                        f"{self.name}: waited {(started - item.enqueued) * 1000:.0f} ms, past its deadline"
                    ),
                )
                continue
            live.append(item)
        if not live:
            return
        try:
            results = self._run_batch(live[0].key, [item.payload for item in live])
            if len(results) != len(live):
                raise RuntimeError(f"{self.name}: batch of {len(live)} returned {len(results)} results")
        except BaseException as exc:  # every caller of the batch gets the error
            for item in live:
                _fail(item, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finished = time.monotonic()
        run_ms = (finished - started) * 1000
        with self._cond:
            self._last_batch_size = len(live)
            self._batch_s = (
                (finished - started)
                if not self._batch_s
                else 0.8 * self._batch_s + 0.2 * (finished - started)
            )
            self.counts["batches"] += 1
            self.counts["items"] += len(live)
        self._batch_size.observe(len(live))
        self._batch_run.observe(finished - started)
        for item, result in zip(live, results, strict=True):
            item.future.set_result(Timed(result, (started - item.enqueued) * 1000, run_ms, len(live)))


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.future.done():
        try:
            item.future.set_exception(exc)
        except Exception:  # already resolved by a racing close()
            pass
