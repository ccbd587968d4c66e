"""Duplicate listings (operations.duplicate_groups), stored in SQL beside the image table.

Three tables per collection, made on first use and dropped with the collection:
- `dupr_<collection>`: one row per finished run (its id is the job's id): when, how many
  images, how many still had no pHash, the thresholds and the group counts. The row is
  written after the run's groups, so a run without its row is unfinished and never shown;
- `dupg_<collection>`: the groups of a run, numbered 1..n in listing order, with their tier
  and size, so a page is a range of group numbers (a cursor, not an offset);
- `dupm_<collection>`: the members of each group with their closest link.

Only the newest run is kept: a finished run deletes the rows of every other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from operations.names import validate_name
from operations.stores.sql_pool import SqlPool

_CHUNK = 1000


@dataclass
class DuplicateRun:
    """A finished listing: what it covered and with which thresholds."""

    run_id: str
    computed_at: float
    images: int
    without_phash: int
    groups: int
    counts: dict[str, int]  # tier -> groups
    params: dict = field(default_factory=dict)  # tiers, phash_max_distance, near_duplicate_threshold


@dataclass
class GroupMember:
    image_id: int
    distance: int | None  # the smallest pHash distance to another member (phash links only)
    score: float | None  # the largest CLIP cosine to another member (clip links only)


@dataclass
class StoredGroup:
    group_no: int
    tier: str
    size: int
    members: list[GroupMember] = field(default_factory=list)


def _tables(collection: str) -> tuple[str, str, str]:
    name = validate_name(collection)
    return f"dupr_{name}", f"dupg_{name}", f"dupm_{name}"


def _ddl(dialect: str, runs: str, groups: str, members: str) -> list[str]:
    mysql = dialect == "mysql"
    text = "LONGTEXT" if mysql else "TEXT"
    engine = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if mysql else ""
    q = (lambda t: f"`{t}`") if mysql else (lambda t: f'"{t}"')
    # A page filtered by tier reads (run_id, tier, group_no) in order.
    tier_key = ", KEY ix_tier (run_id, tier, group_no)" if mysql else ""
    out = [
        f"CREATE TABLE IF NOT EXISTS {q(runs)} (run_id VARCHAR(32) NOT NULL PRIMARY KEY, "
        "computed_at DOUBLE NOT NULL, images BIGINT NOT NULL, without_phash BIGINT NOT NULL, "
        f"n_groups BIGINT NOT NULL, counts {text} NOT NULL, params {text} NOT NULL){engine}",
        f"CREATE TABLE IF NOT EXISTS {q(groups)} (run_id VARCHAR(32) NOT NULL, group_no BIGINT NOT NULL, "
        f"tier VARCHAR(8) NOT NULL, size BIGINT NOT NULL, PRIMARY KEY (run_id, group_no){tier_key}){engine}",
        f"CREATE TABLE IF NOT EXISTS {q(members)} (run_id VARCHAR(32) NOT NULL, group_no BIGINT NOT NULL, "
        "image_id BIGINT NOT NULL, distance INT NULL, score DOUBLE NULL, "
        f"PRIMARY KEY (run_id, group_no, image_id)){engine}",
    ]
    if not mysql:
        out.append(f'CREATE INDEX IF NOT EXISTS "ix_{groups}_tier" ON {q(groups)} (run_id, tier, group_no)')
    return out


def _opt(kind: type, value: object) -> Any:
    return None if value is None else kind(value)


class SqlDuplicateStore:
    """Duplicate listings of the collections, in the image store's SQL database."""

    def __init__(self, pool: SqlPool) -> None:
        self.pool = pool
        self._ready: set[str] = set()

    def _q(self, name: str) -> str:
        # Identifiers cannot be bound; the name was validated by _tables().
        return f"`{name}`" if self.pool.dialect == "mysql" else f'"{name}"'

    def _ensure(self, collection: str) -> tuple[str, str, str]:
        runs, groups, members = _tables(collection)
        if collection not in self._ready:
            # Made on first use (collections from before listings existed included).
            for statement in _ddl(self.pool.dialect, runs, groups, members):
                self.pool.execute(statement)
            self._ready.add(collection)
        return self._q(runs), self._q(groups), self._q(members)

    def drop(self, collection: str) -> None:
        for table in _tables(collection):
            self.pool.execute(f"DROP TABLE IF EXISTS {self._q(table)}")
        self._ready.discard(collection)

    # -- a run being written ----------------------------------------------------
    def clear_run(self, collection: str, run_id: str) -> None:
        """Remove what an earlier attempt of `run_id` wrote (a resumed job starts over)."""
        runs, groups, members = self._ensure(collection)
        for table in (runs, groups, members):
            self.pool.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    def put_groups(self, collection: str, run_id: str, batch: Sequence[StoredGroup]) -> None:
        """Write a batch of numbered groups and their members."""
        _, groups, members = self._ensure(collection)
        self.pool.executemany(
            f"INSERT INTO {groups} (run_id, group_no, tier, size) VALUES (?, ?, ?, ?)",
            [(run_id, g.group_no, g.tier, g.size) for g in batch],
        )
        rows = [(run_id, g.group_no, m.image_id, m.distance, m.score) for g in batch for m in g.members]
        for start in range(0, len(rows), _CHUNK):
            self.pool.executemany(
                f"INSERT INTO {members} (run_id, group_no, image_id, distance, score) VALUES (?, ?, ?, ?, ?)",
                rows[start : start + _CHUNK],
            )

    def finish_run(self, collection: str, run: DuplicateRun) -> None:
        """Record the run (from now on it is the listing) and delete every other run."""
        runs, groups, members = self._ensure(collection)
        self.pool.execute(
            f"INSERT INTO {runs} (run_id, computed_at, images, without_phash, n_groups, counts, params) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run.run_id,
                run.computed_at,
                run.images,
                run.without_phash,
                run.groups,
                json.dumps(run.counts),
                json.dumps(run.params),
            ),
        )
        for table in (runs, groups, members):
            self.pool.execute(f"DELETE FROM {table} WHERE run_id <> ?", (run.run_id,))

    # -- reads ------------------------------------------------------------------
    def latest_run(self, collection: str) -> DuplicateRun | None:
        runs, _, _ = self._ensure(collection)
        rows = self.pool.query(
            f"SELECT run_id, computed_at, images, without_phash, n_groups, counts, params FROM {runs} "
            "ORDER BY computed_at DESC LIMIT 1"
        )
        if not rows:
            return None
        r = rows[0]
        return DuplicateRun(
            r[0], float(r[1]), int(r[2]), int(r[3]), int(r[4]), json.loads(r[5]), json.loads(r[6])
        )

    def groups_after(
        self, collection: str, run_id: str, after: int, limit: int, tier: str | None, max_members: int
    ) -> list[StoredGroup]:
        """Groups numbered above `after` (of `tier` if given), in order, each with its first
        `max_members` members by image id."""
        _, groups, members = self._ensure(collection)
        where, params = "run_id = ? AND group_no > ?", [run_id, int(after)]
        if tier is not None:
            where += " AND tier = ?"
            params.append(tier)
        found = [
            StoredGroup(int(r[0]), r[1], int(r[2]))
            for r in self.pool.query(
                f"SELECT group_no, tier, size FROM {groups} WHERE {where} ORDER BY group_no LIMIT ?",
                [*params, int(limit)],
            )
        ]
        # One query per group, each bounded: a group of thousands shows its first max_members.
        for g in found:
            g.members = [
                GroupMember(int(r[0]), _opt(int, r[1]), _opt(float, r[2]))
                for r in self.pool.query(
                    f"SELECT image_id, distance, score FROM {members} WHERE run_id = ? AND group_no = ? "
                    "ORDER BY image_id LIMIT ?",
                    (run_id, g.group_no, int(max_members)),
                )
            ]
        return found

    def count_groups(self, collection: str, run_id: str, tier: str | None) -> int:
        _, groups, _ = self._ensure(collection)
        where, params = "run_id = ?", [run_id]
        if tier is not None:
            where += " AND tier = ?"
            params.append(tier)
        return int(self.pool.query(f"SELECT COUNT(*) FROM {groups} WHERE {where}", params)[0][0])


def batched(items: Iterable[StoredGroup], size: int) -> Iterable[list[StoredGroup]]:
    """`items` in lists of at most `size` (groups are written a batch at a time)."""
    batch: list[StoredGroup] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
