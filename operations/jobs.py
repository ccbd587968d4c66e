"""Background jobs: loads, bulk adds, OCR and pHash backfills, duplicate listings, calibration,
rebuilds, retention; recorded in the SQL job table.

A job runs in a worker thread of this process, so it survives the client
disconnecting. Its parameters are stored, so a job interrupted by a restart
can be run again and, because loads and adds are idempotent, finishes with
nothing lost and nothing doubled.

Many replicas (processes, on one machine or several) share the job table and
behave as one service (operations/stores/job_store.py has the lease rules):
- a job runs on the replica that holds its lease; a watcher thread of each
  replica renews the leases of its jobs every `tick` (at most 1 s, a third of
  JOB_LEASE_S) and, in the same round, reads their cancel flags, so a cancel
  asked on any replica stops the job within about a second;
- every `poll` (half a lease) each replica with a free worker looks for
  active jobs whose lease lapsed (their replica was killed, lost the network
  or stopped) and takes one over with a conditional UPDATE: no manual resume,
  and two replicas never both win. The job starts again from the top; loads
  and adds skip what is already stored, so its counts end right;
- a replica that finds its lease taken (it stalled past the lease) stops the
  job without recording anything: the new holder's writes win;
- a replica that stops cleanly hands its jobs back (queued, no lease), and the
  next replica that looks takes them at once;
- a job whose replica died MAX_TAKEOVERS times while running it is failed
  instead of being taken over again (it may be what kills them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from operations import metrics, tracing
from operations.context import Services
from operations.domain import IndexSpec
from operations.duplicate_groups import compute_duplicates
from operations.errors import Conflict, NotFound, ServiceError
from operations.ingest import add_folder
from operations.load import load_split
from operations.ocr import read_backlog
from operations.phash_backfill import backfill_phashes
from operations.progress import JobProgress
from operations.reindex import ADDING_KINDS, AutoReindex
from operations.retention import RetentionRule, apply_retention
from operations.stores.job_store import Job

log = logging.getLogger(__name__)
# How long a finished job keeps trying to record its end while SQL is unavailable;
# a row left 'running' is taken over by another replica once its lease lapses.
RECORD_PATIENCE_S = 600.0
# A job cut off this many times by its replica dying is failed, not taken over again.
MAX_TAKEOVERS = 3


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
    if not Path(p["folder"]).is_dir():
        # Taken over by a replica that does not see the folder (a bulk add's spool lives under
        # DATA_ROOT): failing says so, where adding nothing would look like success.
        raise NotFound(
            f"folder {p['folder']} is not on this replica ({socket.gethostname()}); replicas need "
            "DATA_ROOT on shared storage. Resume the job on a replica that has it"
        )
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


def _run_rebuild(svc: Services, job: Job, progress: JobProgress) -> str:
    from operations.rebuild import run_rebuild

    return run_rebuild(svc, job.collection, job.params, progress, job.id, svc.settings.data_root)


def _run_retention(svc: Services, job: Job, progress: JobProgress) -> str:
    rule = RetentionRule.from_params(job.params)
    return apply_retention(svc, job.collection, rule, progress, job.params.get("matched")).message()


RUNNERS: dict[str, Callable[[Services, Job, JobProgress], str]] = {
    "load": _run_load,
    "add": _run_add_folder,
    "calibrate": _run_calibrate,
    "ocr": _run_ocr,
    "phash": _run_phash,
    "duplicates": _run_duplicates,
    "rebuild": _run_rebuild,
    "retention": _run_retention,
}


def replica_name() -> str:
    """This process's name in the job table: host, pid and a random suffix (a pid is reused)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobRunner:
    """Runs jobs one at a time (they are I/O and CPU heavy on a small machine), holding their
    leases, and takes over the jobs of replicas that died (see the module docstring)."""

    def __init__(
        self,
        svc: Services,
        workers: int = 1,
        *,
        lease_s: float | None = None,
        owner: str | None = None,
        watch: bool = True,
    ) -> None:
        if svc.jobs is None:
            raise ValueError("a JobRunner needs a job store")
        self.svc = svc
        self.jobs = svc.jobs
        self.workers = workers
        self.owner = owner or replica_name()
        self.lease_s = float(lease_s if lease_s is not None else svc.settings.job_lease_s)
        self.tick_s = min(1.0, self.lease_s / 3)
        self.poll_s = self.lease_s / 2
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._progress: dict[str, JobProgress] = {}
        self._collections: dict[str, str] = {}  # running job id -> its collection
        self._kinds: dict[str, str] = {}  # running job id -> its kind
        self._tokens: dict[str, str] = {}  # running job id -> its lease token
        self._lost: set[str] = set()  # jobs another replica took from this one
        self._lock = threading.Lock()
        self._shutting_down = False
        self._stopping = threading.Event()  # shutting down: stop waiting for SQL
        self._watch_stop = threading.Event()  # the watcher's end, once every job has stopped
        self._watcher: threading.Thread | None = None
        # A load or add that ends may have grown an AUTO collection past its size: checked in
        # the background (operations.reindex), as after an inline add.
        self.reindex = AutoReindex(svc, self)
        if watch:
            self._watcher = threading.Thread(target=self._watch, name="job-leases", daemon=True)
            self._watcher.start()

    def submit(self, kind: str, collection: str, params: dict, job_id: str | None = None) -> Job:
        job = self.jobs.create(kind, collection, params, job_id, owner=self.owner, lease_s=self.lease_s)
        assert job.lease_token is not None
        self._start(job, job.lease_token)
        return job

    def resume(self, job_id: str) -> Job:
        """Run an interrupted or failed job again (409 for any other state)."""
        token = self.jobs.claim(job_id, self.owner, self.lease_s)
        self._start(self.jobs.get(job_id, 0), token)
        return self.jobs.get(job_id)

    def running_on(self, collection: str) -> list[str]:
        """Ids of the jobs of every replica queued or running on `collection` (this process's
        own too, should SQL lag behind it)."""
        with self._lock:
            mine = {j for j, c in self._collections.items() if c == collection}
        return sorted(mine | set(self.jobs.active_on(collection)))

    def active(self, kind: str, collection: str) -> str | None:
        """The id of a job of `kind` queued or running on `collection`, on any replica."""
        with self._lock:
            ids = sorted(j for j, c in self._collections.items() if c == collection)
            mine = next((j for j in ids if self._kinds[j] == kind), None)
        return mine if mine is not None else self.jobs.active_of(kind, collection)

    def cancel(self, job_id: str) -> None:
        """Ask a job to stop, whichever replica runs it (its flag is in SQL); here at once."""
        self.jobs.request_cancel(job_id)
        with self._lock:
            progress = self._progress.get(job_id)
        if progress is not None:
            progress.cancel()

    def local_jobs(self) -> list[str]:
        with self._lock:
            return sorted(self._progress)

    def _start(self, job: Job, token: str) -> None:
        progress = JobProgress(self.jobs, job.id, kind=job.kind, token=token)
        with self._lock:
            if job.id in self._progress:
                raise Conflict(f"job {job.id} is already running")
            self._progress[job.id] = progress
            self._collections[job.id] = job.collection
            self._kinds[job.id] = job.kind
            self._tokens[job.id] = token
        try:
            if not self.jobs.start(job.id, token):
                raise Conflict(f"job {job.id} was taken by another replica")
        except BaseException:
            self._forget(job.id)
            raise
        try:
            # The job's log lines carry the id of the request that started it, and the job's.
            self._pool.submit(tracing.carry(self._run, job_id=job.id), job, progress)
        except RuntimeError:  # the pool is shut down: this replica is stopping
            with contextlib.suppress(ServiceError):
                self.jobs.release(job.id, token, f"replica {self.owner} stopped before the job started")
            self._forget(job.id)
            raise Conflict(f"replica {self.owner} is stopping; job {job.id} is left to another") from None

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._progress.pop(job_id, None)
            self._collections.pop(job_id, None)
            self._kinds.pop(job_id, None)
            self._tokens.pop(job_id, None)
            self._lost.discard(job_id)

    def _run(self, job: Job, progress: JobProgress) -> None:
        metrics.JOBS_STARTED.labels(job.kind).inc()
        running = metrics.JOBS_RUNNING.labels(job.kind)
        running.inc()
        try:
            self._execute(job, progress)
        finally:
            running.dec()
            progress.finish_metrics()
        # After its end is recorded: the job no longer counts as writing to the collection.
        if job.kind in ADDING_KINDS and not self._shutting_down:
            self.reindex.after_write(job.collection)

    def _execute(self, job: Job, progress: JobProgress) -> None:
        try:
            message = RUNNERS[job.kind](self.svc, job, progress)
            if job.params.get("spooled") and not progress.cancelled():
                shutil.rmtree(job.params["folder"], ignore_errors=True)  # the copies are no longer needed
            state = "cancelled" if progress.cancelled() else "succeeded"
        except ServiceError as exc:
            log.warning("job %s failed: %s", job.id, exc.message)
            state, message = "failed", exc.message
        except Exception as exc:  # a job never takes the process down
            log.exception("job %s crashed", job.id)
            state, message = "failed", f"{type(exc).__name__}: {exc}"
        try:
            with self._lock:
                lost = job.id in self._lost
                token = self._tokens[job.id]
            # Handed back at a stop: "interrupted"; taken by another replica: "lost".
            ended = (
                "lost" if lost else "interrupted" if state == "cancelled" and self._shutting_down else state
            )
            metrics.JOBS_FINISHED.labels(job.kind, ended).inc()
            if lost:
                log.warning(
                    "job %s was taken over by another replica; this one (%s) stopped it", job.id, self.owner
                )
            elif state == "cancelled" and self._shutting_down:
                self._record_end(
                    job.id,
                    lambda: self.jobs.release(
                        job.id,
                        token,
                        f"replica {self.owner} stopped before the job finished; another takes it over",
                    ),
                    "handed back",
                )
            else:
                self._record_end(job.id, lambda: self.jobs.finish(job.id, state, message, token), state)
        finally:
            self._forget(job.id)

    def _record_end(self, job_id: str, write: Callable[[], bool], what: str) -> None:
        """Record how a job ended. While SQL is unavailable (often what ended the job)
        keep trying: a row left 'running' is only taken over once its lease lapses."""
        delay, give_up = 1.0, time.monotonic() + RECORD_PATIENCE_S
        while True:
            try:
                if not write():
                    log.warning("job %s %s, but another replica holds it now: not recorded", job_id, what)
                return
            except ServiceError as exc:
                if self._stopping.is_set() or time.monotonic() > give_up:
                    log.error("could not record that job %s %s: %s", job_id, what, exc.message)
                    return
            self._stopping.wait(delay)
            delay = min(delay * 2, 10.0)

    # -- leases ---------------------------------------------------------------------------
    def _watch(self) -> None:
        next_poll = time.monotonic()  # at start: take over what a dead replica left at once
        tables_ready = False
        while not self._watch_stop.is_set():
            try:
                if not tables_ready:  # SQL may have been down when the server started
                    self.jobs.ensure_tables()
                    tables_ready = True
                self.heartbeat()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_s
                    self.take_over_lapsed()
            except ServiceError as exc:  # SQL down: the leases are renewed once it is back
                log.debug("job leases not renewed now: %s", exc.message)
            except Exception:  # the watcher must outlive any one bad round
                log.exception("job lease round failed")
            self._watch_stop.wait(self.tick_s)

    def heartbeat(self) -> None:
        """Renew this replica's leases and act on what SQL says of its jobs: one taken over by
        another replica, or asked to cancel, is stopped."""
        with self._lock:
            held = dict(self._tokens)
        if not held:
            return
        for job_id, token in held.items():
            self.jobs.renew(job_id, token, self.lease_s)
        holders = self.jobs.holders(list(held))
        for job_id, token in held.items():
            holder, cancel = holders.get(job_id, (None, False))
            with self._lock:
                progress = self._progress.get(job_id)
                if progress is None:
                    continue
                if holder != token:
                    self._lost.add(job_id)
            if holder != token or cancel:
                progress.cancel()

    def take_over_lapsed(self) -> list[str]:
        """Take over active jobs whose lease lapsed, as many as this replica has free workers.
        The ids taken."""
        if self._shutting_down:
            return []
        self.jobs.settle_lapsed(MAX_TAKEOVERS)
        with self._lock:
            free = self.workers - len(self._progress)
        taken: list[str] = []
        if free <= 0:
            return taken
        for job_id in self.jobs.lapsed(free):
            before = self.jobs.get(job_id, 0)
            token = self.jobs.take_over(job_id, self.owner, self.lease_s, MAX_TAKEOVERS)
            if token is None:
                continue  # another replica was first
            job = self.jobs.get(job_id, 0)
            log.warning(
                "took over job %s (%s on %s, %s) from replica %s",
                job_id,
                job.kind,
                job.collection,
                before.state,
                before.owner,
            )
            try:
                self._start(job, token)
            except Conflict:
                continue
            taken.append(job_id)
        return taken

    def shutdown(self) -> None:
        self._shutting_down = True
        self._stopping.set()
        self.reindex.shutdown()  # a check under way ends first; none starts a job any more
        with self._lock:
            for progress in self._progress.values():
                progress.cancel()
        # The watcher keeps renewing the leases until the jobs have stopped (a load ends its batch
        # first), so no other replica starts them while this one still writes.
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            never_started = dict(self._tokens)
        for job_id, token in never_started.items():  # queued here, cancelled with the pool
            with contextlib.suppress(ServiceError):
                self.jobs.release(job_id, token, f"replica {self.owner} stopped before the job started")
            self._forget(job_id)
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
