"""Background jobs: loads, bulk adds, OCR and pHash backfills, duplicate listings, calibration;
recorded in the SQL job table.

A job runs in a worker thread of this process, so it survives the client
disconnecting. Its parameters are stored, so a job interrupted by a restart
can be resumed and, because loads and adds are idempotent, finishes with
nothing lost and nothing doubled.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from operations import metrics, tracing
from operations.context import Services
from operations.domain import IndexSpec
from operations.duplicate_groups import compute_duplicates
from operations.errors import Conflict, ServiceError
from operations.ingest import add_folder
from operations.load import load_split
from operations.ocr import read_backlog
from operations.phash_backfill import backfill_phashes
from operations.progress import JobProgress
from operations.stores.job_store import Job

log = logging.getLogger(__name__)
# How long a finished job keeps trying to record its end while SQL is unavailable;
# after a restart, a job still marked running is marked interrupted (resumable).
RECORD_PATIENCE_S = 600.0


def _run_load(svc: Services, job: Job, progress: JobProgress) -> str:
    p = job.params
    index = IndexSpec(**p["index"]) if p.get("index") else None
    report = load_split(
        svc,
        job.collection,
        Path(p["dataset_dir"]),
        p["split"],
        progress,
        source=p.get("source"),
        index=index,
        data_root=svc.settings.data_root,
    )
    ocr = f", OCR read {report.ocr['read']} (failed {report.ocr['failed']})" if report.ocr else ""
    return f"loaded {report.loaded}, already there {report.already_loaded}, failed {report.failed}{ocr}"


def _run_ocr(svc: Services, job: Job, progress: JobProgress) -> str:
    counts = read_backlog(svc, job.collection, progress)
    return f"read {counts['read']}, failed {counts['failed']}"


def _run_phash(svc: Services, job: Job, progress: JobProgress) -> str:
    counts = backfill_phashes(svc, job.collection, progress)
    return f"hashed {counts['hashed']}, failed {counts['failed']}, still without a pHash {counts['left']}"


def _run_duplicates(svc: Services, job: Job, progress: JobProgress) -> str:
    p = job.params
    run = compute_duplicates(
        svc,
        job.collection,
        job.id,  # the listing's id is its job's: GET /img/duplicates names it job_id
        progress,
        tiers=p.get("tiers") or ("phash", "clip"),
        phash_max_distance=p.get("phash_max_distance"),
        phash_min_cosine=p.get("phash_min_cosine"),
        near_duplicate_threshold=p.get("near_duplicate_threshold"),
    )
    if run is None:
        return "cancelled: the previous listing (if any) is still the one shown"
    counts = ", ".join(f"{tier} {n}" for tier, n in run.counts.items())
    return (
        f"{run.groups} duplicate groups ({counts}) among {run.images} images; "
        f"without a pHash {run.without_phash}"
    )


def _run_add_folder(svc: Services, job: Job, progress: JobProgress) -> str:
    p = job.params
    counts = add_folder(
        svc,
        job.collection,
        Path(p["folder"]),
        progress,
        source=p.get("source", "folder"),
        tags=tuple(p.get("tags", ())),
        created_at=p.get("created_at"),
        meta=p.get("meta"),
        data_root=svc.settings.data_root,
    )
    return f"added {counts['added']}, already present {counts['present']}, failed {counts['failed']}"


def _run_calibrate(svc: Services, job: Job, progress: JobProgress) -> str:
    from operations.relevance.calibrate import calibrate_model

    p = job.params
    cal, path = calibrate_model(
        svc,
        Path(p["dataset_dir"]),
        p["split"],
        collection=p.get("collection"),
        model=p.get("model"),
        data_root=svc.settings.data_root,
    )
    f = cal.fitted_on
    return (
        f"calibrated {cal.model_name} (platt a={cal.a:.4f} b={cal.b:.4f}) on {f['captions']} captions x "
        f"{f['images']} images ({f['matching_pairs']} matching pairs); stored in {path.name}"
    )


RUNNERS: dict[str, Callable[[Services, Job, JobProgress], str]] = {
    "load": _run_load,
    "add": _run_add_folder,
    "calibrate": _run_calibrate,
    "ocr": _run_ocr,
    "phash": _run_phash,
    "duplicates": _run_duplicates,
}


class JobRunner:
    """Runs jobs one at a time (they are I/O and CPU heavy on a small machine)."""

    def __init__(self, svc: Services, workers: int = 1) -> None:
        if svc.jobs is None:
            raise ValueError("a JobRunner needs a job store")
        self.svc = svc
        self.jobs = svc.jobs
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._progress: dict[str, JobProgress] = {}
        self._collections: dict[str, str] = {}  # running job id -> its collection
        self._kinds: dict[str, str] = {}  # running job id -> its kind
        self._lock = threading.Lock()
        self._shutting_down = False
        self._stopping = threading.Event()

    def submit(self, kind: str, collection: str, params: dict, job_id: str | None = None) -> Job:
        job = self.jobs.create(kind, collection, params, job_id)
        self._start(job)
        return job

    def resume(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job.state not in ("interrupted", "failed"):
            raise Conflict(f"job {job_id} is {job.state}; only interrupted or failed jobs can be resumed")
        self._start(job)
        return self.jobs.get(job_id)

    def running_on(self, collection: str) -> list[str]:
        """Ids of the jobs of this process running (or queued) on `collection`."""
        with self._lock:
            return sorted(j for j, c in self._collections.items() if c == collection)

    def active(self, kind: str, collection: str) -> str | None:
        """The id of a job of `kind` of this process running (or queued) on `collection`."""
        with self._lock:
            ids = sorted(j for j, c in self._collections.items() if c == collection)
            return next((j for j in ids if self._kinds[j] == kind), None)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            progress = self._progress.get(job_id)
        if progress is None:
            raise Conflict(f"job {job_id} is not running in this process")
        progress.cancel()

    def _start(self, job: Job) -> None:
        progress = JobProgress(self.jobs, job.id, kind=job.kind)
        with self._lock:
            if job.id in self._progress:
                raise Conflict(f"job {job.id} is already running")
            self._progress[job.id] = progress
            self._collections[job.id] = job.collection
            self._kinds[job.id] = job.kind
        self.jobs.start(job.id)
        # The job's log lines carry the id of the request that started it, and the job's.
        self._pool.submit(tracing.carry(self._run, job_id=job.id), job, progress)

    def _run(self, job: Job, progress: JobProgress) -> None:
        metrics.JOBS_STARTED.labels(job.kind).inc()
        running = metrics.JOBS_RUNNING.labels(job.kind)
        running.inc()
        try:
            self._execute(job, progress)
        finally:
            running.dec()
            progress.finish_metrics()

    def _execute(self, job: Job, progress: JobProgress) -> None:
        try:
            message = RUNNERS[job.kind](self.svc, job, progress)
            if job.params.get("spooled") and not progress.cancelled():
                shutil.rmtree(job.params["folder"], ignore_errors=True)  # the copies are no longer needed
            if progress.cancelled():
                state = "interrupted" if self._shutting_down else "cancelled"
            else:
                state = "succeeded"
        except ServiceError as exc:
            log.warning("job %s failed: %s", job.id, exc.message)
            state, message = "failed", exc.message
        except Exception as exc:  # a job never takes the process down
            log.exception("job %s crashed", job.id)
            state, message = "failed", f"{type(exc).__name__}: {exc}"
        metrics.JOBS_FINISHED.labels(job.kind, state).inc()
        try:
            self._record_end(job.id, state, message)
        finally:
            with self._lock:
                self._progress.pop(job.id, None)
                self._collections.pop(job.id, None)
                self._kinds.pop(job.id, None)

    def _record_end(self, job_id: str, state: str, message: str) -> None:
        """Record how a job ended. While SQL is unavailable (often what ended the job)
        keep trying: a row left 'running' could never be resumed."""
        delay, give_up = 1.0, time.monotonic() + RECORD_PATIENCE_S
        while True:
            try:
                self.jobs.finish(job_id, state, message)
                return
            except ServiceError as exc:
                if self._stopping.is_set() or time.monotonic() > give_up:
                    log.error("could not record that job %s %s: %s", job_id, state, exc.message)
                    return
            self._stopping.wait(delay)
            delay = min(delay * 2, 10.0)

    def shutdown(self) -> None:
        self._shutting_down = True
        self._stopping.set()
        with self._lock:
            for progress in self._progress.values():
                progress.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
