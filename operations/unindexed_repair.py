"""The server's periodic repair of rows a dead add or load left without their vector.

An add stores a row (indexed=0), then its vector, then marks the row (operations.ingest): a
process killed in between leaves the row invisible to searches. Every REPAIR_INTERVAL_S (the
first round within FIRST_ROUND_MAX_S of the start, since a restart after a crash is when such
rows exist) one daemon thread of each replica runs `repair_unindexed` with
older_than_s=HOLDER_DEAD_AFTER_S on every collection a name clients use answers with, so only
rows older than a live add's ever are touched. Skipped:
- a collection any job of any replica has queued or running (`JobRunner.running_on`): a load
  writes its rows before their vectors and a bulk import may take long, and the job indexes its
  own rows (taken over by another replica if its own died);
- a collection a command-line load writes (a live writer lease, operations.stores.
  sql_writer_leases; checked in `repair_unindexed`): that load is no job, and its rows may wait
  longer than the age bound for a bulk import;
- a rebuild's versions that no name points at (one being built: its job writes its vectors; one
  left behind by a switch or a failed rebuild: no search reaches it; `imgsearch repair NAME`
  repairs one by hand).
Several replicas repairing the same rows at once is harmless: each upserts the same vector
(the same model on the same stored image) under the same id, and marking a row indexed twice
is the same as once. Every error is caught and logged (a store outage just means the next
round); the thread never dies and never takes the process down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from operations.collections import VERSION_NAME
from operations.context import Services
from operations.errors import NotFound, ServiceError
from operations.ingest import ADD_CHUNK, HOLDER_DEAD_AFTER_S, repair_unindexed

if TYPE_CHECKING:
    from operations.jobs import JobRunner

log = logging.getLogger(__name__)

# The first round runs this long after the start at most (sooner with a shorter interval).
FIRST_ROUND_MAX_S = 30.0


def repair_targets(svc: Services) -> dict[str, list[str]]:
    """The collections a name clients use answers with (store name -> those names, itself
    included for a collection named directly); rebuild versions no name points at are left out."""
    rows = svc.aliases.rows(fresh=True) if svc.aliases is not None else {}
    targets: dict[str, list[str]] = {}
    for store in svc.vectors.list_collections():
        pointing = sorted(r.name for r in rows.values() if r.kind == "alias" and r.target == store)
        # A name with a row of its own is not a collection named directly (an alias to another
        # version, or a version's name); nor is a version's form without a row (being built).
        direct = store not in rows and not VERSION_NAME.fullmatch(store)
        if pointing or direct:
            targets[store] = pointing + ([store] if direct else [])
    return targets


def repair_round(
    svc: Services, runner: JobRunner | None, should_stop: Callable[[], bool] = lambda: False
) -> dict[str, int]:
    """One round over every target collection: rows indexed, by collection. Never raises."""
    repaired: dict[str, int] = {}
    try:
        targets = repair_targets(svc)
    except ServiceError as exc:
        log.warning("unindexed-row repair: could not list the collections (%s); next round", exc.message)
        return repaired
    except Exception:
        log.exception("unindexed-row repair: could not list the collections; next round")
        return repaired
    for store, names in targets.items():
        if should_stop():
            break
        try:
            if runner is not None and (
                busy := sorted({j for n in {store, *names} for j in runner.running_on(n)})
            ):
                log.debug("unindexed-row repair: skipping %s, jobs %s work on it", store, busy)
                continue
            # By the name clients use: its writes are refused while a switch moves it (next round).
            n = repair_unindexed(
                svc, names[0], ADD_CHUNK, older_than_s=HOLDER_DEAD_AFTER_S, should_stop=should_stop
            )
        except NotFound:  # dropped meanwhile
            continue
        except ServiceError as exc:
            log.warning("unindexed-row repair of %s failed (%s); next round", store, exc.message)
            continue
        except Exception:
            log.exception("unindexed-row repair of %s failed; next round", store)
            continue
        if n:
            repaired[store] = n
            log.info(
                "unindexed-row repair: indexed %d rows of %s left without their vector over %.0f s",
                n,
                store,
                HOLDER_DEAD_AFTER_S,
            )
    return repaired


class UnindexedRepair:
    """The replica's repair thread: started with the app, stopped at its shutdown."""

    def __init__(self, svc: Services, runner: JobRunner | None, interval_s: float | None = None) -> None:
        self.svc = svc
        self.runner = runner
        self.interval_s = float(svc.settings.repair_interval_s if interval_s is None else interval_s)
        self.rounds = 0  # rounds finished (tests, logs)
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> bool:
        """Start the thread (not with an interval of 0); whether it started."""
        if self.interval_s <= 0 or self.thread is not None:
            return False
        self.thread = threading.Thread(target=self._run, name="unindexed-repair", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        delay = min(self.interval_s, FIRST_ROUND_MAX_S)
        while not self._stop.wait(delay):
            try:
                repair_round(self.svc, self.runner, self._stop.is_set)
            except Exception:  # repair_round catches its own; this thread must outlive anything
                log.exception("unindexed-row repair round failed; next round")
            self.rounds += 1
            delay = self.interval_s

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop between batches; a batch being encoded is waited for up to `timeout_s` (the
        thread is a daemon: a process exiting does not wait for it)."""
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                log.warning("unindexed-row repair still running after %.0f s; not waited for", timeout_s)
