"""Background jobs (loads, bulk adds) kept in the SQL store.

A job row holds everything needed to run it again (kind, collection and its
parameters as JSON), so a job interrupted by a restart can be resumed.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from operations.errors import NotFound
from operations.stores.sql_pool import SqlPool

MAX_FAILURES_KEPT = 10_000
ACTIVE_STATES = ("queued", "running")


@dataclass
class Job:
    id: str
    kind: str
    collection: str
    state: str  # queued, running, succeeded, failed, interrupted
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
    "updated_at, finished_at, message"
)


class JobStore:
    def __init__(self, pool: SqlPool) -> None:
        self.pool = pool

    def ensure_tables(self) -> None:
        text = "LONGTEXT" if self.pool.dialect == "mysql" else "TEXT"
        auto = (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"
            if self.pool.dialect == "mysql"
            else "INTEGER PRIMARY KEY"
        )
        self.pool.execute(f"""CREATE TABLE IF NOT EXISTS jobs (
            id VARCHAR(32) NOT NULL PRIMARY KEY, kind VARCHAR(32) NOT NULL, collection VARCHAR(64) NOT NULL,
            state VARCHAR(16) NOT NULL, params {text} NOT NULL, processed BIGINT NOT NULL DEFAULT 0,
            failed BIGINT NOT NULL DEFAULT 0, total BIGINT NULL, created_at DOUBLE NOT NULL,
            started_at DOUBLE NULL, updated_at DOUBLE NULL, finished_at DOUBLE NULL,
            message {text} NOT NULL)""")
        self.pool.execute(f"""CREATE TABLE IF NOT EXISTS job_failures (
            seq {auto}, job_id VARCHAR(32) NOT NULL, item VARCHAR(512) NOT NULL, reason {text} NOT NULL)""")

    def create(self, kind: str, collection: str, params: dict, job_id: str | None = None) -> Job:
        job = Job(job_id or uuid.uuid4().hex, kind, collection, "queued", params, created_at=time.time())
        self.pool.execute(
            f"INSERT INTO jobs ({_COLS}) VALUES (?, ?, ?, ?, ?, 0, 0, NULL, ?, NULL, NULL, NULL, '')",
            (job.id, kind, collection, job.state, json.dumps(params, ensure_ascii=False), job.created_at),
        )
        return job

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

    def start(self, job_id: str) -> None:
        """Mark running and clear counters: a resumed job recounts from the start."""
        now = time.time()
        self.pool.execute(
            "UPDATE jobs SET state = 'running', processed = 0, failed = 0, started_at = ?, "
            "updated_at = ?, finished_at = NULL, message = '' WHERE id = ?",
            (now, now, job_id),
        )
        self.pool.execute("DELETE FROM job_failures WHERE job_id = ?", (job_id,))

    def progress(
        self, job_id: str, processed: int, failed: int, total: int | None, failures: Sequence[tuple[str, str]]
    ) -> None:
        self.pool.execute(
            "UPDATE jobs SET processed = ?, failed = ?, total = ?, updated_at = ? WHERE id = ?",
            (processed, failed, total, time.time(), job_id),
        )
        if failures:
            self.pool.executemany(
                "INSERT INTO job_failures (job_id, item, reason) VALUES (?, ?, ?)",
                [(job_id, item[:500], reason[:2000]) for item, reason in failures],
            )

    def finish(self, job_id: str, state: str, message: str = "") -> None:
        now = time.time()
        self.pool.execute(
            "UPDATE jobs SET state = ?, message = ?, updated_at = ?, finished_at = ? WHERE id = ?",
            (state, message[:2000], now, now, job_id),
        )

    def mark_interrupted(self) -> builtins.list[str]:  # `list` here is the method above
        """At start-up: jobs left running by a dead process become resumable."""
        ids = [r[0] for r in self.pool.query("SELECT id FROM jobs WHERE state IN ('queued', 'running')")]
        for job_id in ids:
            self.pool.execute(
                "UPDATE jobs SET state = 'interrupted', message = ? WHERE id = ?",
                ("the server stopped before the job finished; resume it", job_id),
            )
        return ids
