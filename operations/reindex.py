"""Automatic re-index: a collection whose index AUTO chose FLAT, grown to AUTO_INDEX_FLAT_BELOW
vectors, is rebuilt into a new version with AUTO re-chosen (HNSW) and switched to, by the same
rebuild job `POST /img/collections/{name}/rebuild {"switch": true}` starts (operations.rebuild):
searches never pause; writes are held off (503 Retry-After) only for the switch's grace.

When (AUTO_REINDEX, on by default): after a write that adds vectors ends, i.e. an inline add
request and the end of a load or add job (operations.jobs), never on a search. The write only
queues a check (a set lookup, no I/O); one background thread of the replica runs the checks,
one per collection at a time, so the write's answer and its time are unchanged whatever the
check finds or raises.

The check (`start_if_due`), each step cheap and the first that fails ends it quietly:
- the name is one clients use (not a rebuild's version) and rebuilds are possible here (SQL);
- its index was chosen by AUTO and is FLAT (cached collection metadata);
- it holds >= AUTO_INDEX_FLAT_BELOW vectors (one count call);
- the latest rebuild of the name: none active (one at a time), and none that failed or was
  cancelled: a rebuild that failed would fail again on every write, each leaving a half-built
  version behind, so after one the re-index is left to the operator (resume that job, or start a
  rebuild by hand; describe names it);
- no other job (a load, a bulk add) is writing to the name: the switch would refuse it (409);
  the last of them to end runs the check again.
Then the rebuild job is submitted. Two replicas that see the threshold at once compute the same
new version name, and so the same job id (`auto_job_id`): the job table's primary key lets one
of them in, the other is told Conflict ("another replica started it", logged at INFO). Should
one replica's job have created its version before the other computes the name, the names and ids
differ and both run; switch_to refuses the first to reach it while the other is active, so at
most one switches and nothing is lost (a spare version is left, and a failed job that stops
further automatic attempts until the operator acts).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from operations.context import Services
from operations.domain import IndexSpec
from operations.errors import Conflict, NotFound, ServiceError
from operations.stores.job_store import ACTIVE_STATES
from operations.stores.sql_pool import is_integrity_error

if TYPE_CHECKING:  # the runner imports this module
    from operations.jobs import JobRunner

log = logging.getLogger(__name__)

# The states of a rebuild after which no automatic one starts (see the module docstring).
GAVE_UP_STATES = ("failed", "cancelled", "interrupted")
# Job kinds whose end may have grown a collection past the size.
ADDING_KINDS = ("load", "add")


def auto_job_id(alias: str, target: str) -> str:
    """The automatic rebuild's job id: the same on every replica for the same new version."""
    return "reindex" + hashlib.sha1(f"{alias}>{target}".encode()).hexdigest()[:25]


def reindex_due(index: IndexSpec, count: int, flat_below: int) -> bool:
    """AUTO chose FLAT for the collection and it has reached the size AUTO switches at (README
    "Index choice"): what describe shows as reindex_due, and what starts the rebuild here."""
    return index.auto and index.type == "FLAT" and count >= flat_below


def start_if_due(svc: Services, runner: JobRunner, collection: str) -> str | None:
    """Start the automatic rebuild of `collection` when it is due (module docstring): its job id,
    or None. Store errors propagate (the caller logs them)."""
    settings = svc.settings
    if not settings.auto_reindex or svc.aliases is None or svc.jobs is None:
        return None
    row = svc.aliases.rows().get(collection)
    if row is not None and row.kind == "version":
        return None
    store = svc.store_name(collection)
    try:
        index = svc.vectors.describe_meta(store).index  # cached (DESCRIPTION_RECHECK_S)
    except NotFound:  # dropped meanwhile
        return None
    flat_below = settings.auto_index_flat_below
    # At count = flat_below only the index decides: a collection not on AUTO's FLAT needs no count.
    if not reindex_due(index, flat_below, flat_below):
        return None
    count = svc.vectors.count(store)
    if not reindex_due(index, count, flat_below):
        return None
    last = svc.jobs.latest_of("rebuild", collection)
    if last is not None and last.state in ACTIVE_STATES:
        log.debug("re-index of %s: rebuild job %s is under way", collection, last.id)
        return None
    if last is not None and last.state in GAVE_UP_STATES:
        log.debug("re-index of %s: rebuild job %s %s; left to the operator", collection, last.id, last.state)
        return None
    if writing := runner.running_on(collection):
        log.debug("re-index of %s: jobs %s write to it; the last to end checks again", collection, writing)
        return None
    from operations.rebuild import rebuild_params  # heavy imports, only once a re-index is due

    params = rebuild_params(svc, collection, switch=True)
    params["automatic"] = True
    job_id = auto_job_id(collection, params["target"])
    try:
        runner.submit("rebuild", collection, params, job_id=job_id)
    except Exception as exc:
        if not is_integrity_error(exc):
            raise
        raise Conflict(f"job {job_id} exists: another replica started this re-index") from None
    log.info(
        "automatic re-index of %s: %d vectors >= AUTO_INDEX_FLAT_BELOW %d, rebuild job %s (to %s)",
        collection,
        count,
        flat_below,
        job_id,
        params["target"],
    )
    return job_id


class AutoReindex:
    """Runs the checks of one replica on one background thread, at most one queued or running
    per collection (a check queued while another runs sees that write's vectors too)."""

    def __init__(self, svc: Services, runner: JobRunner) -> None:
        self.svc = svc
        self.runner = runner
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reindex")
        self._stopped = False

    def after_write(self, collection: str) -> None:
        """A write that added vectors to `collection` ended: check it in the background. Never
        raises and does no I/O."""
        if not self.svc.settings.auto_reindex:
            return
        with self._lock:
            if self._stopped or collection in self._queued:
                return
            self._queued.add(collection)
        try:
            self._pool.submit(self._check, collection)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._queued.discard(collection)

    def _check(self, collection: str) -> None:
        with self._lock:
            self._queued.discard(collection)
            if self._stopped:  # the replica is stopping: it starts no job
                return
        try:
            start_if_due(self.svc, self.runner, collection)
        except Conflict as exc:
            log.info("automatic re-index of %s not started here: %s", collection, exc.message)
        except ServiceError as exc:
            log.warning("automatic re-index check of %s failed: %s", collection, exc.message)
        except Exception as exc:  # the check must never take the thread down; one line, no traceback
            log.warning("automatic re-index check of %s failed: %s: %s", collection, type(exc).__name__, exc)

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Block until the checks queued so far have run (tests, shutdown)."""
        self._pool.submit(lambda: None).result(timeout=timeout_s)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
        self._pool.shutdown(wait=True, cancel_futures=True)
