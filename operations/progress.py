"""Progress reporting shared by CLI (tqdm) and background jobs (SQL rows)."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from tqdm import tqdm

from operations import metrics
from operations.stores.job_store import MAX_FAILURES_KEPT, JobStore


class Progress(Protocol):
    processed: int
    failed: int

    def set_total(self, total: int | None) -> None: ...
    def advance(self, processed: int = 0) -> None: ...
    def fail(self, item: str, reason: str) -> None: ...
    def cancelled(self) -> bool: ...
    def flush(self) -> None: ...


class Counter:
    """Counts only; the base of the others and enough for tests."""

    def __init__(self) -> None:
        self.processed = 0
        self.failed = 0
        self.total: int | None = None
        self.failures: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def set_total(self, total: int | None) -> None:
        self.total = total

    def advance(self, processed: int = 0) -> None:
        with self._lock:
            self.processed += processed

    def fail(self, item: str, reason: str) -> None:
        with self._lock:
            self.failed += 1
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append((item, reason))

    def cancel(self) -> None:
        self._stop.set()

    def cancelled(self) -> bool:
        return self._stop.is_set()

    def flush(self) -> None:
        return None


class TqdmProgress(Counter):
    """A progress bar on the terminal; failures are printed as they happen."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self.bar = tqdm(desc=desc, unit="img", dynamic_ncols=True)

    def set_total(self, total: int | None) -> None:
        super().set_total(total)
        self.bar.total = total
        self.bar.refresh()

    def advance(self, processed: int = 0) -> None:
        super().advance(processed)
        self.bar.update(processed)

    def fail(self, item: str, reason: str) -> None:
        super().fail(item, reason)
        self.bar.update(1)
        self.bar.write(f"skipped {item}: {reason}")

    def flush(self) -> None:
        self.bar.set_postfix(failed=self.failed)
        self.bar.close()


class JobProgress(Counter):
    """Writes counters and new failures to the job row, at most twice a second, and
    counts items into the job metrics (by the job's `kind`) as they happen. With a lease
    `token` it writes only while that token holds the job (a replica that lost it writes nothing)."""

    def __init__(
        self,
        jobs: JobStore,
        job_id: str,
        interval_s: float = 0.5,
        kind: str = "job",
        token: str | None = None,
    ) -> None:
        super().__init__()
        self.jobs = jobs
        self.job_id = job_id
        self.token = token
        self.interval = interval_s
        self._last = 0.0
        self._written_failures = 0
        self._processed_items = metrics.JOB_ITEMS.labels(kind, "processed")
        self._failed_items = metrics.JOB_ITEMS.labels(kind, "failed")
        self._remaining_gauge = metrics.JOB_ITEMS_REMAINING.labels(kind)
        self._remaining = 0  # this job's share of the gauge

    def _count_remaining(self, done: bool = False) -> None:
        with self._lock:
            left = 0 if done or self.total is None else max(self.total - self.processed - self.failed, 0)
            delta, self._remaining = left - self._remaining, left
        if delta:
            self._remaining_gauge.inc(delta)

    def finish_metrics(self) -> None:
        """The job ended: it has nothing left to do."""
        self._count_remaining(done=True)

    def _maybe_write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        with self._lock:
            new = self.failures[self._written_failures :]
            self._written_failures = len(self.failures)
            processed, failed, total = self.processed, self.failed, self.total
        self.jobs.progress(self.job_id, processed, failed, total, new, token=self.token)

    def set_total(self, total: int | None) -> None:
        super().set_total(total)
        self._count_remaining()
        self._maybe_write(force=True)

    def advance(self, processed: int = 0) -> None:
        super().advance(processed)
        if processed:
            self._processed_items.inc(processed)
            self._count_remaining()
        self._maybe_write()

    def fail(self, item: str, reason: str) -> None:
        super().fail(item, reason)
        self._failed_items.inc()
        self._count_remaining()
        self._maybe_write()

    def flush(self) -> None:
        self._maybe_write(force=True)
