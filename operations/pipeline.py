"""A small stage runner: items flow from a source through stages of worker threads.

Each stage has a bounded queue and one or more threads; what a stage's work returns (unless
None) goes to the next stage's queue. The bounded queues keep memory flat: a fast reader waits
for a slow writer instead of piling items up.

Rules the runner keeps, whatever the work:

- The first error stops the run: the source is read no further, every stage drops the items
  still queued (it keeps taking them, so that nobody blocks on a full queue), and the error is
  raised once every thread has ended. An error raised by the source itself wins.
- Cancellation (`cancelled()` turning true) stops reading the source; items already taken are
  finished, so the stores stay consistent, and `run_stages` returns normally.
- The end of the source is an end marker per worker, sent stage by stage: a stage ends only
  after the stage before it has ended, so nothing is left in a queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from queue import Queue
from typing import Any

from operations import tracing

_END = object()


@dataclass(frozen=True)
class Stage:
    """One step: `work(item)` on `workers` threads, fed through a queue of `queue_size` items.

    `work` returns the item for the next stage, or None to pass nothing on."""

    name: str
    work: Callable[[Any], Any]
    workers: int = 1
    queue_size: int = 2


class _Failure:
    """The first error of any thread, shared by all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def record(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc


def run_stages(
    source: Iterable[Any], stages: Sequence[Stage], cancelled: Callable[[], bool] = lambda: False
) -> None:
    """Feed every item of `source` through `stages`, in threads; see the module docstring."""
    if not stages:
        raise ValueError("run_stages needs at least one stage")
    failure = _Failure()
    queues: list[Queue] = [Queue(maxsize=max(1, s.queue_size)) for s in stages]

    def worker(index: int) -> None:
        stage, inbox = stages[index], queues[index]
        outbox = queues[index + 1] if index + 1 < len(stages) else None
        while (item := inbox.get()) is not _END:
            if failure.error is not None:
                continue  # drain: the run is failing, but whoever feeds this queue must not block
            try:
                result = stage.work(item)
                if result is not None and outbox is not None:
                    outbox.put(result)
            except BaseException as exc:
                failure.record(exc)

    threads = [
        [
            threading.Thread(target=tracing.carry(worker), args=(i,), name=f"{stage.name}-{n}", daemon=True)
            for n in range(max(1, stage.workers))
        ]
        for i, stage in enumerate(stages)
    ]
    for group in threads:
        for t in group:
            t.start()
    try:
        items = iter(source)
        # Checked before each item is taken: making an item (reading, encoding) is work too.
        while failure.error is None and not cancelled():
            item = next(items, _END)
            if item is _END:
                break
            queues[0].put(item)
    finally:
        for inbox, group in zip(queues, threads, strict=True):
            for _ in group:
                inbox.put(_END)
            for t in group:
                t.join()
    if failure.error is not None:
        raise failure.error
