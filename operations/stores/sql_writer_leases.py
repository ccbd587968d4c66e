"""Leases of writers that are not jobs: a command-line `imgsearch load` writing a collection.

The servers' automatic repair (operations.ingest.repair_unindexed with an age bound) indexes
rows left without their vector for over HOLDER_DEAD_AFTER_S, taken for a dead writer's. A job
is skipped by it (operations.unindexed_repair); a command-line load is no job, and its rows
may wait longer than that for their vectors, live: a `--bulk-import` file the server has not
imported yet, whose import landing after the repair's write would hold the id twice in Milvus.
So such a load holds a lease on its collection while it runs, renewed by a thread on the
database's clock, and the automatic repair leaves a collection with a live lease alone. A load
that dies stops renewing; its lease lapses after LEASE_S and its rows are repaired as any dead
writer's; the next load deletes its row a day later (LAPSED_KEPT_S).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator

from operations.errors import NotFound, ServiceError
from operations.stores.sql_pool import DB_NOW, SqlPool

log = logging.getLogger(__name__)

# A lease lasts this long past its last renewal; the holder renews every third of it, so a
# renewal or two may fail (a short SQL outage) before the servers take the load for dead.
LEASE_S = 60.0
# A killed load leaves its row behind, lapsed. The next `hold` deletes rows lapsed this long
# ago: long enough that a writer cut off from the database by an outage finds its row again
# when the outage ends (a lapsed row has no effect; a deleted one stops its renewals), short
# enough that the table holds about one day of killed loads.
LAPSED_KEPT_S = 86_400.0


class WriterLeases:
    """The `writer_leases` table: one row per live writer (id, collection, who, lease end)."""

    def __init__(self, pool: SqlPool) -> None:
        self.pool = pool
        self._now = DB_NOW[pool.dialect]

    def ensure_table(self) -> None:
        self.pool.execute(
            "CREATE TABLE IF NOT EXISTS writer_leases (id VARCHAR(32) NOT NULL PRIMARY KEY, "
            "collection VARCHAR(64) NOT NULL, holder VARCHAR(255) NOT NULL, lease_until DOUBLE NOT NULL)"
        )

    def hold(self, collection: str, holder: str, lease_s: float = LEASE_S) -> str:
        """Take a lease on `collection` for `holder` (a description: command, host, pid); its id."""
        self.ensure_table()  # a command line may run before any server made the tables
        self.pool.execute(
            f"DELETE FROM writer_leases WHERE lease_until < {self._now} - ?", (float(LAPSED_KEPT_S),)
        )
        lease_id = uuid.uuid4().hex
        self.pool.execute(
            "INSERT INTO writer_leases (id, collection, holder, lease_until) "
            f"VALUES (?, ?, ?, {self._now} + ?)",
            (lease_id, collection, holder[:255], float(lease_s)),
        )
        return lease_id

    def renew(self, lease_id: str, lease_s: float = LEASE_S) -> bool:
        """Push the lease `lease_s` past the database's now; False if its row is gone."""
        n = self.pool.execute(
            f"UPDATE writer_leases SET lease_until = {self._now} + ? WHERE id = ?", (float(lease_s), lease_id)
        )
        return n == 1

    def release(self, lease_id: str) -> None:
        self.pool.execute("DELETE FROM writer_leases WHERE id = ?", (lease_id,))

    def live_on(self, collection: str) -> list[str]:
        """The holders of live leases on `collection` (none if no writer ever made the table)."""
        try:
            rows = self.pool.query(
                f"SELECT holder FROM writer_leases WHERE collection = ? AND lease_until > {self._now} "
                "ORDER BY holder",
                (collection,),
            )
        except NotFound:  # the table does not exist yet: no writer has held a lease here
            return []
        return [str(r[0]) for r in rows]


def this_process(command: str) -> str:
    return f"{command} on {socket.gethostname()} pid {os.getpid()}"


@contextlib.contextmanager
def held(
    leases: WriterLeases | None, collection: str, holder: str, lease_s: float = LEASE_S
) -> Iterator[None]:
    """Hold a lease on `collection` for the block, renewed every third of `lease_s` by a daemon
    thread. A renewal that fails is logged and tried again (the lease may lapse meanwhile: the
    servers may then repair rows this writer still works on); the block itself never fails
    because of the lease once it was taken."""
    if leases is None:
        yield
        return
    lease_id = leases.hold(collection, holder, lease_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                if not leases.renew(lease_id, lease_s):
                    log.warning("writer lease on %s is gone (deleted by hand?); not renewed", collection)
                    return
            except ServiceError as exc:
                log.warning("writer lease on %s not renewed (%s); again later", collection, exc.message)
            except Exception:
                log.exception("could not renew the writer lease on %s; trying again", collection)

    thread = threading.Thread(target=renew, name="writer-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5.0)
        try:
            leases.release(lease_id)
        except Exception as exc:  # the lease lapses by itself after lease_s
            log.warning("could not release the writer lease on %s (%s); it lapses by itself", collection, exc)
