"""The collection names clients use, mapped to the collections that hold the data (SQL).

One table, `collection_names`, read by every replica:
- kind 'alias': a name clients use (e.g. "images") -> the collection answering it now
  (e.g. "images__v2"). A rebuild switches it with one UPDATE.
- kind 'version': the API name of a collection made before aliases existed, whose stores
  still carry the alias's own name (e.g. "images__v1" -> "images"): the first rebuild of
  "images" turns the name into an alias, and the old data stays addressable as v1.
A name with no row is its own collection (every collection made before this table).

`fence_until` (the database's clock, seconds since the epoch) holds writes to an alias off
while a switch copies the last writes over: until then a write is refused with 503 and
Retry-After (operations.aliases). A fence is a deadline, not a flag, so a switch whose
process died cannot leave a name closed to writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from operations.names import validate_name
from operations.stores.sql_pool import DB_NOW, SqlPool, is_integrity_error


@dataclass(frozen=True)
class NameRow:
    name: str
    target: str
    kind: str  # "alias" or "version"
    fenced: bool  # an alias whose writes are held off now (a switch in progress)
    updated_at: float


class SqlAliasStore:
    """`collection_names` over `SqlPool` (see the module docstring)."""

    def __init__(self, pool: SqlPool) -> None:
        self.pool = pool
        self._now = DB_NOW[pool.dialect]
        self._ready = False

    def ensure_table(self) -> None:
        if self._ready:
            return
        self.pool.execute(
            "CREATE TABLE IF NOT EXISTS collection_names ("
            "name VARCHAR(64) NOT NULL PRIMARY KEY, target VARCHAR(64) NOT NULL, "
            "kind VARCHAR(16) NOT NULL, fence_until DOUBLE NOT NULL DEFAULT 0, "
            "updated_at DOUBLE NOT NULL DEFAULT 0)"
        )
        self._ready = True

    def _select(self, where: str = "", params: tuple = ()) -> list[NameRow]:
        self.ensure_table()
        rows = self.pool.query(
            f"SELECT name, target, kind, fence_until > {self._now}, updated_at FROM collection_names {where}",
            params,
        )
        return [NameRow(str(r[0]), str(r[1]), str(r[2]), bool(r[3]), float(r[4])) for r in rows]

    def all(self) -> list[NameRow]:
        return self._select("ORDER BY name")

    def get(self, name: str) -> NameRow | None:
        rows = self._select("WHERE name = ?", (validate_name(name),))
        return rows[0] if rows else None

    def fence(self, alias: str, current_target: str, seconds: float) -> None:
        """Hold writes to `alias` off for `seconds` (an alias row is made for a plain
        collection, pointing at itself: nothing moves until `switch`)."""
        self.ensure_table()
        validate_name(alias)
        validate_name(current_target)
        updated = self.pool.execute(
            f"UPDATE collection_names SET fence_until = {self._now} + ? WHERE name = ? AND kind = 'alias'",
            (float(seconds), alias),
        )
        if updated:
            return
        try:
            self.pool.execute(
                "INSERT INTO collection_names (name, target, kind, fence_until, updated_at) "
                f"VALUES (?, ?, 'alias', {self._now} + ?, {self._now})",
                (alias, current_target, float(seconds)),
            )
        except Exception as exc:
            if not is_integrity_error(exc):
                raise
            self.fence(alias, current_target, seconds)  # another replica made the row first

    def unfence(self, alias: str) -> None:
        self.ensure_table()
        self.pool.execute(
            "UPDATE collection_names SET fence_until = 0 WHERE name = ?", (validate_name(alias),)
        )

    def switch(self, alias: str, target: str, versions: dict[str, str]) -> bool:
        """Point `alias` at `target` and lift its fence, recording `versions` (name -> target)
        in the same transaction. False (nothing changed) when the fence had already lapsed:
        writes may then have reached the old collection after the last copy."""
        self.ensure_table()
        validate_name(alias)
        validate_name(target)
        with self.pool.transaction("switch an alias in collection_names") as cur:
            cur.execute(
                self.pool.sql(
                    f"UPDATE collection_names SET target = ?, fence_until = 0, updated_at = {self._now} "
                    f"WHERE name = ? AND kind = 'alias' AND fence_until > {self._now}"
                ),
                (target, alias),
            )
            if cur.rowcount != 1:
                return False
            for name, store in versions.items():
                cur.execute(
                    self.pool.sql("DELETE FROM collection_names WHERE name = ?"), (validate_name(name),)
                )
                cur.execute(
                    self.pool.sql(
                        "INSERT INTO collection_names (name, target, kind, fence_until, updated_at) "
                        f"VALUES (?, ?, 'version', 0, {self._now})"
                    ),
                    (name, validate_name(store)),
                )
        return True

    def delete(self, name: str) -> None:
        self.ensure_table()
        self.pool.execute("DELETE FROM collection_names WHERE name = ?", (validate_name(name),))
