"""Background jobs (loads, bulk adds) kept in the SQL store, and their leases.

A job row holds everything needed to run it again (kind, collection and its
parameters as JSON), so a job interrupted by a restart can be resumed.

Several replicas share the table. A replica runs a job only while it holds
the job's lease: `lease_token` names the claim (a fresh random token each
time a replica takes the job) and `lease_until` is when it lapses unless
renewed. Every claim is one conditional UPDATE whose WHERE says what the
row must look like (state, lease expired, ...), so of two replicas racing
for a job exactly one sees rowcount 1. Every later write of the holder
(start, progress, failures, finish, release) names its token, so a replica
that lost its lease (stalled past it, another took the job over) changes
nothing any more. Times of leases are the database's clock, read inside
the statement that compares them, so replicas on hosts with skewed clocks
agree on when a lease lapsed; only the database host's clock matters.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from operations.errors import Conflict, NotFound
from operations.stores.sql_pool import DB_NOW, SqlPool

MAX_FAILURES_KEPT = 10_000
ACTIVE_STATES = ("queued", "running")
# States a job is resumed from by hand (POST /img/jobs/{id}/resume); an active
# job whose lease lapsed is taken over by a replica without being asked.
RESUMABLE_STATES = ("interrupted", "failed")

# Lease columns added to job tables made before leases existed.
_LEASE_COLUMNS = {
    "owner": "VARCHAR(128) NULL",
    "lease_token": "VARCHAR(32) NULL",
    "lease_until": "DOUBLE NULL",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "takeovers": "INTEGER NOT NULL DEFAULT 0",
}


@dataclass
class Job:
    id: str
    kind: str
    collection: str
    state: str  # queued, running, succeeded, failed, cancelled, interrupted
    params: dict
    processed: int = 0
    failed: int = 0
    total: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    failures: list[dict] = field(default_factory=list)
    owner: str | None = None  # the replica holding the lease (or that held it last)
    lease_token: str | None = None
    lease_until: float | None = None  # database clock
    cancel_requested: bool = False
    takeovers: int = 0  # times a replica took it over from one whose lease lapsed

    @property
    def rate(self) -> float | None:
        """Items per second since the (last) start."""
        if not self.started_at:
            return None
        end = self.finished_at or self.updated_at or time.time()
        elapsed = end - self.started_at
        done = self.processed + self.failed
        return done / elapsed if elapsed > 0 and done else None

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        if self.state != "running" or not rate or self.total is None:
            return None
        return max(0.0, (self.total - self.processed - self.failed) / rate)


_COLS = (
    "id, kind, collection, state, params, processed, failed, total, created_at, started_at, "
    "updated_at, finished_at, message, owner, lease_token, lease_until, cancel_requested, takeovers"
)


def _token() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, pool: SqlPool) -> None:
        self.pool = pool
        self._now = DB_NOW[pool.dialect]

    # -- tables ------------------------------------------------------------------
    def ensure_tables(self) -> None:
        text = "LONGTEXT" if self.pool.dialect == "mysql" else "TEXT"
        auto = (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"
            if self.pool.dialect == "mysql"
            else "INTEGER PRIMARY KEY"
        )
        lease = ", ".join(f"{name} {kind}" for name, kind in _LEASE_COLUMNS.items())
        self.pool.execute(f"""CREATE TABLE IF NOT EXISTS jobs (
            id VARCHAR(32) NOT NULL PRIMARY KEY, kind VARCHAR(32) NOT NULL, collection VARCHAR(64) NOT NULL,
            state VARCHAR(16) NOT NULL, params {text} NOT NULL, processed BIGINT NOT NULL DEFAULT 0,
            failed BIGINT NOT NULL DEFAULT 0, total BIGINT NULL, created_at DOUBLE NOT NULL,
            started_at DOUBLE NULL, updated_at DOUBLE NULL, finished_at DOUBLE NULL,
            message {text} NOT NULL, {lease})""")
        self.pool.execute(f"""CREATE TABLE IF NOT EXISTS job_failures (
            seq {auto}, job_id VARCHAR(32) NOT NULL, item VARCHAR(512) NOT NULL, reason {text} NOT NULL)""")
        for name, kind in _LEASE_COLUMNS.items():
            if name not in self._columns():
                self._tolerate_race(
                    f"ALTER TABLE jobs ADD COLUMN {name} {kind}", lambda n=name: n in self._columns()
                )
        # Every replica looks for active jobs with lapsed leases every few seconds: by state, not
        # by a scan of the whole history.
        if not self._has_index("jobs_state"):
            self._tolerate_race(
                "CREATE INDEX jobs_state ON jobs (state)", lambda: self._has_index("jobs_state")
            )
        if not self._has_index("job_failures_job"):
            self._tolerate_race(
                "CREATE INDEX job_failures_job ON job_failures (job_id)",
                lambda: self._has_index("job_failures_job"),
            )

    def _columns(self) -> set[str]:
        if self.pool.dialect == "mysql":
            rows = self.pool.query(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = 'jobs'"
            )
        else:
            rows = [(r[1],) for r in self.pool.query("PRAGMA table_info(jobs)")]
        return {str(r[0]).lower() for r in rows}

    def _has_index(self, name: str) -> bool:
        if self.pool.dialect == "mysql":
            rows = self.pool.query(
                "SELECT 1 FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() AND index_name = ?",
                (name,),
            )
        else:
            rows = self.pool.query("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,))
        return bool(rows)

    def _tolerate_race(self, ddl: str, done) -> None:
        """Run a schema change that another replica starting at the same moment may have made
        first (duplicate column or index): that error is fine once the change is there."""
        try:
            self.pool.execute(ddl)
        except Exception:
            if not done():
                raise

    def db_now(self) -> float:
        """The database's clock (seconds since the epoch): what leases are measured by."""
        return float(self.pool.query(f"SELECT {self._now}")[0][0])

    # -- reading -------------------------------------------------------------------
    def _row(self, r: tuple) -> Job:
        return Job(
            r[0],
            r[1],
            r[2],
            r[3],
            json.loads(r[4]),
            int(r[5]),
            int(r[6]),
            None if r[7] is None else int(r[7]),
            r[8],
            r[9],
            r[10],
            r[11],
            r[12],
            owner=r[13],
            lease_token=r[14],
            lease_until=None if r[15] is None else float(r[15]),
            cancel_requested=bool(r[16]),
            takeovers=int(r[17] or 0),
        )

    def get(self, job_id: str, failures_limit: int = 100) -> Job:
        rows = self.pool.query(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"job {job_id!r} does not exist", job=job_id)
        job = self._row(rows[0])
        job.failures = [
            {"item": item, "reason": reason}
            for item, reason in self.pool.query(
                "SELECT item, reason FROM job_failures WHERE job_id = ? ORDER BY seq LIMIT ?",
                (job_id, int(failures_limit)),
            )
        ]
        return job

    def list(self, limit: int = 50) -> list[Job]:
        return [
            self._row(r)
            for r in self.pool.query(
                f"SELECT {_COLS} FROM jobs ORDER BY created_at DESC LIMIT ?", (int(limit),)
            )
        ]

    def active_on(self, collection: str) -> builtins.list[str]:  # `list` here is the method above
        """Ids of the jobs of any replica that are queued or running on `collection`."""
        return sorted(
            r[0]
            for r in self.pool.query(
                "SELECT id FROM jobs WHERE collection = ? AND state IN ('queued', 'running')", (collection,)
            )
        )

    def active_of(self, kind: str, collection: str) -> str | None:
        """The oldest job of `kind` queued or running on `collection`, on any replica."""
        rows = self.pool.query(
            "SELECT id FROM jobs WHERE collection = ? AND kind = ? AND state IN ('queued', 'running') "
            "ORDER BY created_at LIMIT 1",
            (collection, kind),
        )
        return rows[0][0] if rows else None

    def latest_of(self, kind: str, collection: str) -> Job | None:
        """The newest job of `kind` on `collection`, in any state (without its failures)."""
        rows = self.pool.query(
            f"SELECT {_COLS} FROM jobs WHERE collection = ? AND kind = ? ORDER BY created_at DESC LIMIT 1",
            (collection, kind),
        )
        return self._row(rows[0]) if rows else None

    # -- claiming --------------------------------------------------------------------
    def create(
        self,
        kind: str,
        collection: str,
        params: dict,
        job_id: str | None = None,
        *,
        owner: str | None = None,
        lease_s: float = 0.0,
    ) -> Job:
        """A new queued job. With an `owner` it is created already claimed by it (lease of
        `lease_s`), so no other replica takes it between its creation and its start."""
        job = Job(job_id or uuid.uuid4().hex, kind, collection, "queued", params, created_at=time.time())
        token = _token() if owner else None
        self.pool.execute(
            f"INSERT INTO jobs ({_COLS}) VALUES (?, ?, ?, ?, ?, 0, 0, NULL, ?, NULL, NULL, NULL, '', "
            f"?, ?, CASE WHEN ? IS NULL THEN NULL ELSE {self._now} + ? END, 0, 0)",
            (
                job.id,
                kind,
                collection,
                job.state,
                json.dumps(params, ensure_ascii=False),
                job.created_at,
                owner,
                token,
                token,
                float(lease_s),
            ),
        )
        job.owner, job.lease_token = owner, token
        return job

    def claim(self, job_id: str, owner: str, lease_s: float) -> str:
        """Claim a job to resume it by hand: only from an interrupted or failed state (one
        conditional UPDATE, so two replicas asked at once cannot both run it). The lease token,
        or NotFound / Conflict naming the job's state."""
        token = _token()
        n = self.pool.execute(
            f"UPDATE jobs SET owner = ?, lease_token = ?, lease_until = {self._now} + ?, "
            "cancel_requested = 0, takeovers = 0 WHERE id = ? AND state IN ('interrupted', 'failed')",
            (owner, token, float(lease_s), job_id),
        )
        if n != 1:
            job = self.get(job_id, 0)
            raise Conflict(
                f"job {job_id} is {job.state}; only interrupted or failed jobs can be resumed", job=job_id
            )
        return token

    def lapsed(self, limit: int) -> builtins.list[str]:
        """Active jobs whose lease lapsed (or that never had one), oldest first: their replica
        died or stopped. Cancel requests and jobs taken over too often are settled first."""
        return [
            r[0]
            for r in self.pool.query(
                f"SELECT id FROM jobs WHERE state IN ('queued', 'running') AND cancel_requested = 0 "
                f"AND (lease_until IS NULL OR lease_until < {self._now}) ORDER BY created_at LIMIT ?",
                (int(limit),),
            )
        ]

    def take_over(self, job_id: str, owner: str, lease_s: float, max_takeovers: int) -> str | None:
        """Claim an active job whose lease lapsed; its new lease token, or None when another
        replica was first (or renewed it, or it was cancelled, or taken over too often).

        A job found `running` was cut off by a dead replica: that counts as a takeover. One
        found `queued` was handed over by a replica that stopped cleanly (or never started): not.
        """
        token = _token()
        # `takeovers` is assigned first: MySQL evaluates SET left to right with the new values,
        # so it must read `state` before `state` is set (SQLite always reads the old row).
        n = self.pool.execute(
            "UPDATE jobs SET takeovers = takeovers + CASE WHEN state = 'running' THEN 1 ELSE 0 END, "
            f"owner = ?, lease_token = ?, lease_until = {self._now} + ? "
            "WHERE id = ? AND state IN ('queued', 'running') AND cancel_requested = 0 "
            f"AND (lease_until IS NULL OR lease_until < {self._now}) "
            "AND (state = 'queued' OR takeovers < ?)",
            (owner, token, float(lease_s), job_id, int(max_takeovers)),
        )
        return token if n == 1 else None

    def settle_lapsed(self, max_takeovers: int) -> builtins.list[str]:
        """Jobs whose lease lapsed and that are not to run again: cancelled ones become
        `cancelled`, and one that was cut off `max_takeovers` times (it may be what kills its
        replicas) becomes `failed`, to be resumed by hand. The ids settled."""
        now = time.time()
        lapsed = f"state IN ('queued', 'running') AND (lease_until IS NULL OR lease_until < {self._now})"
        ids = [
            r[0]
            for r in self.pool.query(
                f"SELECT id FROM jobs WHERE {lapsed} AND (cancel_requested = 1 "
                "OR (state = 'running' AND takeovers >= ?))",
                (int(max_takeovers),),
            )
        ]
        for job_id in ids:
            self.pool.execute(
                f"UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'failed' END, "
                "message = CASE WHEN cancel_requested = 1 THEN ? ELSE ? END, "
                "lease_token = NULL, lease_until = NULL, updated_at = ?, finished_at = ? "
                f"WHERE id = ? AND {lapsed}",
                (
                    "cancelled while its replica was gone",
                    f"its replica died {max_takeovers} times while running it; resume it by hand "
                    "once the cause is found",
                    now,
                    now,
                    job_id,
                ),
            )
        return ids

    # -- the holder's writes (each names its lease token) -------------------------------
    def start(self, job_id: str, token: str) -> bool:
        """Mark running and clear counters: a resumed job recounts from the start. False when
        `token` no longer holds the job."""
        now = time.time()
        n = self.pool.execute(
            "UPDATE jobs SET state = 'running', processed = 0, failed = 0, started_at = ?, "
            "updated_at = ?, finished_at = NULL, message = '' WHERE id = ? AND lease_token = ?",
            (now, now, job_id, token),
        )
        if n != 1 and not self.holds(job_id, token):
            return False
        self.pool.execute("DELETE FROM job_failures WHERE job_id = ?", (job_id,))
        return True

    def holds(self, job_id: str, token: str) -> bool:
        return bool(self.pool.query("SELECT 1 FROM jobs WHERE id = ? AND lease_token = ?", (job_id, token)))

    def renew(self, job_id: str, token: str, lease_s: float) -> None:
        """Push the lease `lease_s` past the database's now (the holder's heartbeat). Whether
        it still holds the job is read with `holders`."""
        self.pool.execute(
            f"UPDATE jobs SET lease_until = {self._now} + ? WHERE id = ? AND lease_token = ?",
            (float(lease_s), job_id, token),
        )

    def holders(self, job_ids: Sequence[str]) -> dict[str, tuple[str | None, bool]]:
        """For each existing job of `job_ids`: (its lease token, cancel requested)."""
        if not job_ids:
            return {}
        marks = ", ".join("?" * len(job_ids))
        return {
            r[0]: (r[1], bool(r[2]))
            for r in self.pool.query(
                f"SELECT id, lease_token, cancel_requested FROM jobs WHERE id IN ({marks})", tuple(job_ids)
            )
        }

    def progress(
        self,
        job_id: str,
        processed: int,
        failed: int,
        total: int | None,
        failures: Sequence[tuple[str, str]],
        token: str | None = None,
    ) -> None:
        """Counters and new failures; with a `token`, only while it holds the job."""
        fence, fence_params = ("AND lease_token = ?", (token,)) if token else ("", ())
        self.pool.execute(
            f"UPDATE jobs SET processed = ?, failed = ?, total = ?, updated_at = ? WHERE id = ? {fence}",
            (processed, failed, total, time.time(), job_id, *fence_params),
        )
        if failures:
            self.pool.executemany(
                "INSERT INTO job_failures (job_id, item, reason) "
                f"SELECT ?, ?, ? FROM jobs WHERE id = ? {fence}",
                [(job_id, item[:500], reason[:2000], job_id, *fence_params) for item, reason in failures],
            )

    def finish(self, job_id: str, state: str, message: str = "", token: str | None = None) -> bool:
        """Record how the job ended and drop its lease; with a `token`, only while it holds the
        job (False otherwise: another replica has taken it over)."""
        now = time.time()
        fence, fence_params = ("AND lease_token = ?", (token,)) if token else ("", ())
        n = self.pool.execute(
            "UPDATE jobs SET state = ?, message = ?, updated_at = ?, finished_at = ?, lease_token = NULL, "
            f"lease_until = NULL WHERE id = ? {fence}",
            (state, message[:2000], now, now, job_id, *fence_params),
        )
        return n == 1

    def release(self, job_id: str, token: str, message: str) -> bool:
        """Give a job back (this replica is stopping): queued with no lease, so the next replica
        that looks takes it over at once, not counted as a takeover."""
        n = self.pool.execute(
            "UPDATE jobs SET state = 'queued', message = ?, updated_at = ?, lease_token = NULL, "
            "lease_until = NULL WHERE id = ? AND lease_token = ?",
            (message[:2000], time.time(), job_id, token),
        )
        return n == 1

    def request_cancel(self, job_id: str) -> None:
        """Ask an active job to stop, from any replica: the holder reads the flag at its next
        heartbeat. NotFound, or Conflict when the job is not active."""
        n = self.pool.execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state IN ('queued', 'running')", (job_id,)
        )
        if n != 1:
            job = self.get(job_id, 0)  # MySQL counts a row already flagged as unchanged
            if job.state not in ACTIVE_STATES:
                raise Conflict(
                    f"job {job_id} is {job.state}; only queued or running jobs can be cancelled", job=job_id
                )
