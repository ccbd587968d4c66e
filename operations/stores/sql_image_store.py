"""Image store in SQL: MySQL (pymysql) or SQLite through one code path.

One table per collection, named `img_<collection>` after `validate_name`.
The image is kept as base64 (the datasets' own form). On MySQL it is a
LONGBLOB, which holds real photos: base64 is ASCII, and a binary column spares
the server a utf8mb4 check of every character (tables made before, with
LONGTEXT, are read and written the same way); sha256 is UNIQUE so the database itself guarantees one copy
of each image, even for two identical uploads at the same moment.
`indexed` is 0 until the vector is in Milvus: a load or add killed between the
two stores leaves rows that the next run finds and finishes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from operations.bounds import MAX_IMAGE_ID, MIN_IMAGE_ID, check_int64
from operations.domain import ImageRow, InsertResult, SearchFilter
from operations.errors import NotFound, PayloadTooLarge
from operations.names import TAG_SEPARATOR, validate_name
from operations.stores.sql_pool import SqlPool, is_integrity_error

log = logging.getLogger(__name__)


def encode_tags(tags: tuple[str, ...] | list[str]) -> str:
    """Tags as stored in SQL: ',a,b,' so that one tag matches with LIKE '%,tag,%'."""
    return TAG_SEPARATOR + TAG_SEPARATOR.join(tags) + TAG_SEPARATOR if tags else ""


def decode_tags(stored: str) -> tuple[str, ...]:
    """Inverse of `encode_tags`."""
    return tuple(t for t in (stored or "").split(TAG_SEPARATOR) if t)


_COLUMNS = (
    "id",
    "sha256",
    "mime",
    "width",
    "height",
    "source",
    "tags",
    "external_id",
    "created_at",
    "added_at",
    "indexed",
)
_CHUNK = 500


def table_name(collection: str) -> str:
    return "img_" + validate_name(collection)


def _ddl(dialect: str, table: str) -> list[str]:
    if dialect == "mysql":
        return [
            f"""CREATE TABLE IF NOT EXISTS `{table}` (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            sha256 CHAR(64) NOT NULL,
            mime VARCHAR(32) NOT NULL DEFAULT 'image/jpeg',
            width INT NOT NULL DEFAULT 0,
            height INT NOT NULL DEFAULT 0,
            source VARCHAR(256) NOT NULL DEFAULT '',
            tags VARCHAR(2048) NOT NULL DEFAULT '',
            external_id VARCHAR(256) NULL,
            created_at BIGINT NOT NULL DEFAULT 0,
            added_at BIGINT NOT NULL DEFAULT 0,
            indexed TINYINT NOT NULL DEFAULT 0,
            image_b64 LONGBLOB NOT NULL,
            UNIQUE KEY uq_sha256 (sha256),
            KEY ix_indexed (indexed),
            KEY ix_source_created (source, created_at),
            KEY ix_created (created_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
        ]
    return [
        # AUTOINCREMENT: an id is never given again (plain INTEGER PRIMARY KEY reuses the
        # largest after its row is deleted), as MySQL's AUTO_INCREMENT; a late vector delete
        # of a failed add's id (operations/vector_cleanup.py) must not hit a newer image.
        f"""CREATE TABLE IF NOT EXISTS "{table}" (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sha256 TEXT NOT NULL UNIQUE,
            mime TEXT NOT NULL DEFAULT 'image/jpeg',
            width INTEGER NOT NULL DEFAULT 0,
            height INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '',
            external_id TEXT NULL,
            created_at INTEGER NOT NULL DEFAULT 0,
            added_at INTEGER NOT NULL DEFAULT 0,
            indexed INTEGER NOT NULL DEFAULT 0,
            image_b64 TEXT NOT NULL)""",
        f'CREATE INDEX IF NOT EXISTS "ix_{table}_indexed" ON "{table}" (indexed)',
        f'CREATE INDEX IF NOT EXISTS "ix_{table}_src" ON "{table}" (source, created_at)',
        f'CREATE INDEX IF NOT EXISTS "ix_{table}_created" ON "{table}" (created_at)',
    ]


def phash_table_name(collection: str) -> str:
    return "ph_" + validate_name(collection)


# Perceptual hashes beside the images (operations.phash): the 64-bit hash as a
# signed BIGINT and its four 16-bit bands, each indexed, so a lookup reads the
# rows sharing a band (or a band one bit away) instead of every row.
PHASH_BANDS = 4


def _phash_ddl(dialect: str, table: str) -> list[str]:
    bands = ", ".join(f"b{i} INT NOT NULL" for i in range(PHASH_BANDS))
    if dialect == "mysql":
        keys = ", ".join(f"KEY ix_b{i} (b{i})" for i in range(PHASH_BANDS))
        return [
            f"CREATE TABLE IF NOT EXISTS `{table}` (id BIGINT NOT NULL PRIMARY KEY, "
            f"phash BIGINT NOT NULL, {bands}, {keys}) ENGINE=InnoDB"
        ]
    return [
        f'CREATE TABLE IF NOT EXISTS "{table}" (id INTEGER PRIMARY KEY, phash INTEGER NOT NULL, {bands})'
    ] + [f'CREATE INDEX IF NOT EXISTS "ix_{table}_b{i}" ON "{table}" (b{i})' for i in range(PHASH_BANDS)]


def _as_text(b64: bytes | str) -> str:
    # A LONGBLOB column gives bytes; base64 is ASCII either way.
    return b64.decode("ascii") if isinstance(b64, (bytes, bytearray)) else b64


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


class SqlImageStore:
    """`ImageStore` over `SqlPool`."""

    def __init__(self, pool: SqlPool) -> None:
        self.pool = pool
        self._known: set[str] = set()
        self._phash_known: set[str] = set()
        self._created_indexed: set[str] = set()  # tables known to have their created_at index
        self._max_packet: int | None = None

    @property
    def parallel_writes(self) -> bool:
        """Several connections may insert at once (SQLite serialises writers anyway)."""
        return self.pool.dialect == "mysql"

    @classmethod
    def from_settings(
        cls, mysql_url: str, sqlite_path: Path, timeout_s: float, pool_size: int
    ) -> SqlImageStore:
        return cls(SqlPool(mysql_url, sqlite_path if not mysql_url else None, timeout_s, pool_size))

    def _q(self, name: str) -> str:
        # Identifiers cannot be bound; the name was validated by table_name().
        return f"`{name}`" if self.pool.dialect == "mysql" else f'"{name}"'

    def _table(self, collection: str) -> str:
        table = table_name(collection)
        if collection not in self._known:
            if not self.has_collection(collection):
                raise NotFound(f"collection {collection!r} has no image table", collection=collection)
            self._warn_if_ids_reused(collection)
            self._known.add(collection)
        return self._q(table)

    # -- ids never given again ----------------------------------------------------
    def reuses_ids(self, collection: str) -> bool:
        """Whether a deleted image's id can be given to a later image: only a SQLite table made
        before its id became AUTOINCREMENT (SQLite's plain INTEGER PRIMARY KEY hands out the
        largest id again once its row is deleted; MySQL's AUTO_INCREMENT never does)."""
        if self.pool.dialect != "sqlite":
            return False
        rows = self.pool.query(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table_name(collection),)
        )
        if not rows:
            raise NotFound(f"collection {collection!r} has no image table", collection=collection)
        return "AUTOINCREMENT" not in str(rows[0][0]).upper()

    def _warn_if_ids_reused(self, collection: str) -> None:
        if self.reuses_ids(collection):
            log.warning(
                "collection %s: its SQLite image table can give a deleted image's id to a later one "
                "(made by an older version); a failed add's late clean-up could then remove the newer "
                "image. Run `python -m scripts.cli upgrade-ids %s` once to stop it.",
                collection,
                collection,
            )

    def stop_id_reuse(self, collection: str) -> int | None:
        """Rebuild a table that `reuses_ids` as one that never does; the rows copied (None:
        nothing to do).

        One transaction: a table of the current form is made beside it, every row is copied with
        its id (images included: the database briefly needs room for a second copy), the old
        table is dropped and the new one takes its name and indexes. A failure leaves the old
        table as it was.
        """
        if not self.reuses_ids(collection):
            return None
        table = table_name(collection)
        building = table + "__upgrade"
        indexes = _ddl("sqlite", table)[1:]
        with self.pool.transaction("upgrade ids") as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{building}"')  # a crashed run's leftover
            cur.execute(_ddl("sqlite", building)[0])
            cur.execute(f'PRAGMA table_info("{table}")')
            present = {r[1] for r in cur.fetchall()}
            # Names from the schema, kept only when they are the store's own columns.
            columns = ", ".join(c for c in (*_COLUMNS, "image_b64") if c in present)
            cur.execute(f'INSERT INTO "{building}" ({columns}) SELECT {columns} FROM "{table}" ORDER BY id')
            copied = cur.rowcount
            cur.execute(f'DROP TABLE "{table}"')
            cur.execute(f'ALTER TABLE "{building}" RENAME TO "{table}"')
            for statement in indexes:
                cur.execute(statement)
        self._created_indexed.add(table)
        log.info("collection %s: image table rebuilt, %d rows; ids are never given again", collection, copied)
        return copied

    def ping(self) -> None:
        self.pool.query("SELECT 1")

    def max_image_b64_bytes(self) -> int | None:
        """The largest base64 image one row can take (MySQL's max_allowed_packet), None = no limit."""
        if self.pool.dialect != "mysql":
            return None
        if self._max_packet is None:
            self._max_packet = int(self.pool.query("SELECT @@max_allowed_packet")[0][0])
        return self._max_packet - 64 * 1024  # room for the other columns and the statement

    def _check_size(self, row: ImageRow) -> None:
        limit = self.max_image_b64_bytes()
        if limit is not None and len(row.image_b64 or "") > limit:
            raise PayloadTooLarge(
                f"image is {len(row.image_b64 or '')} bytes as base64; this MySQL server takes "
                f"at most {limit} (max_allowed_packet)"
            )

    def ensure_collection(self, collection: str) -> None:
        table = table_name(collection)
        for statement in _ddl(self.pool.dialect, table):
            self.pool.execute(statement)
        self._ensure_created_index(table)
        self._known.add(collection)

    def _ensure_created_index(self, table: str) -> None:
        """Retention selects and counts by created_at alone (operations.retention): a table made
        before that index existed gets it, once per process (on MySQL a tolerated race: another
        replica may add it at the same moment)."""
        if table in self._created_indexed:
            return
        if self.pool.dialect == "sqlite":
            self.pool.execute(f'CREATE INDEX IF NOT EXISTS "ix_{table}_created" ON "{table}" (created_at)')
        elif not self._has_created_index(table):
            try:
                self.pool.execute(f"ALTER TABLE {self._q(table)} ADD KEY ix_created (created_at)")
            except Exception:
                if not self._has_created_index(table):
                    raise
        self._created_indexed.add(table)

    def _has_created_index(self, table: str) -> bool:
        return bool(
            self.pool.query(
                "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() "
                "AND table_name = ? AND index_name = 'ix_created'",
                (table,),
            )
        )

    def has_collection(self, collection: str) -> bool:
        return self._has_table(table_name(collection))

    def drop_collection(self, collection: str) -> None:
        self.pool.execute(f"DROP TABLE IF EXISTS {self._q(table_name(collection))}")
        self.pool.execute(f"DROP TABLE IF EXISTS {self._q(phash_table_name(collection))}")
        self._created_indexed.discard(table_name(collection))
        self._known.discard(collection)
        self._phash_known.discard(collection)

    # -- perceptual hashes ------------------------------------------------------
    def _phash_table(self, collection: str) -> str:
        self._table(collection)  # the collection exists
        table = phash_table_name(collection)
        if collection not in self._phash_known:
            # Collections made before pHashes existed get the table on first use.
            for statement in _phash_ddl(self.pool.dialect, table):
                self.pool.execute(statement)
            self._phash_known.add(collection)
        return self._q(table)

    def put_phashes(self, collection: str, items: Sequence[tuple[int, int, tuple[int, ...]]]) -> None:
        """Store (id, signed 64-bit pHash, its bands) rows; an id already hashed keeps its row."""
        table = self._phash_table(collection)
        ignore = "INSERT IGNORE" if self.pool.dialect == "mysql" else "INSERT OR IGNORE"
        cols = ", ".join(f"b{i}" for i in range(PHASH_BANDS))
        self.pool.executemany(
            f"{ignore} INTO {table} (id, phash, {cols}) VALUES ({_placeholders(2 + PHASH_BANDS)})",
            [(int(i), int(h), *(int(b) for b in bands)) for i, h, bands in items],
        )

    def phash_candidates(self, collection: str, probes: Sequence[Sequence[int]]) -> dict[int, int]:
        """id -> pHash of the rows whose band i is one of probes[i] (any i): indexed lookups."""
        table = self._phash_table(collection)
        found: dict[int, int] = {}
        for i, values in enumerate(probes[:PHASH_BANDS]):
            vals = sorted({int(v) for v in values})
            # A duplicate listing probes a whole page of hashes at once: chunked, so a
            # statement stays within SQLite's and the driver's parameter limits.
            for start in range(0, len(vals), _CHUNK):
                chunk = vals[start : start + _CHUNK]
                for r in self.pool.query(
                    f"SELECT id, phash FROM {table} WHERE b{i} IN ({_placeholders(len(chunk))})", chunk
                ):
                    found[int(r[0])] = int(r[1])
        return found

    def phash_rows(self, collection: str, after_id: int, limit: int) -> list[tuple[int, int]]:
        """(id, pHash) of hashed images with id > after_id, by id (a listing's pages)."""
        table = self._phash_table(collection)
        return [
            (int(r[0]), int(r[1]))
            for r in self.pool.query(
                f"SELECT id, phash FROM {table} WHERE id > ? ORDER BY id LIMIT ?", (int(after_id), int(limit))
            )
        ]

    def ids_without_phash(self, collection: str, after_id: int, limit: int) -> list[int]:
        """Ids of stored images with no pHash yet (id > after_id, by id): the backfill's work."""
        images, hashes = self._table(collection), self._phash_table(collection)
        return [
            int(r[0])
            for r in self.pool.query(
                f"SELECT i.id FROM {images} i LEFT JOIN {hashes} h ON h.id = i.id "
                "WHERE h.id IS NULL AND i.id > ? ORDER BY i.id LIMIT ?",
                (int(after_id), int(limit)),
            )
        ]

    def count_without_phash(self, collection: str) -> int:
        """How many stored images have no pHash (a dataset load stores none; see the backfill)."""
        images, hashes = self._table(collection), self._phash_table(collection)
        rows = self.pool.query(
            f"SELECT COUNT(*) FROM {images} i LEFT JOIN {hashes} h ON h.id = i.id WHERE h.id IS NULL"
        )
        return int(rows[0][0])

    def indexed_ids_after(self, collection: str, after_id: int, limit: int) -> list[int]:
        """Ids of images whose vector is stored (indexed), id > after_id, by id: a pass over a
        collection one page at a time."""
        table = self._table(collection)
        return [
            int(r[0])
            for r in self.pool.query(
                f"SELECT id FROM {table} WHERE indexed = 1 AND id > ? ORDER BY id LIMIT ?",
                (int(after_id), int(limit)),
            )
        ]

    # -- rebuilds (operations.rebuild) ------------------------------------------
    def ids_after(self, collection: str, after_id: int, limit: int) -> list[int]:
        """Ids of every stored image with id > after_id, by id (a pass over the whole table)."""
        table = self._table(collection)
        return [
            int(r[0])
            for r in self.pool.query(
                f"SELECT id FROM {table} WHERE id > ? ORDER BY id LIMIT ?", (int(after_id), int(limit))
            )
        ]

    def copy_rows(self, collection: str, source: str, ids: Sequence[int]) -> int:
        """Copy the rows `ids` (and their pHashes) of `source` into `collection` in SQL, marked
        not indexed (their vectors are still to be written); ids already there are skipped."""
        dst, src = self._table(collection), self._table(source)
        ignore = "INSERT IGNORE" if self.pool.dialect == "mysql" else "INSERT OR IGNORE"
        cols = ", ".join((*_COLUMNS, "image_b64"))
        picked = ", ".join("0" if c == "indexed" else c for c in (*_COLUMNS, "image_b64"))
        copied = 0
        has_phash = self._has_table(phash_table_name(source))
        for start in range(0, len(ids), _CHUNK):
            chunk = check_int64(list(ids[start : start + _CHUNK]), "image id")
            marks = _placeholders(len(chunk))
            copied += self.pool.execute(
                f"{ignore} INTO {dst} ({cols}) SELECT {picked} FROM {src} WHERE id IN ({marks})", chunk
            )
            if has_phash:
                bands = ", ".join(f"b{i}" for i in range(PHASH_BANDS))
                src_ph = self._q(phash_table_name(source))
                self.pool.execute(
                    f"{ignore} INTO {self._phash_table(collection)} (id, phash, {bands}) "
                    f"SELECT id, phash, {bands} FROM {src_ph} WHERE id IN ({marks})",
                    chunk,
                )
        return copied

    def _has_table(self, table: str) -> bool:
        if self.pool.dialect == "mysql":
            rows = self.pool.query(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                (table,),
            )
        else:
            rows = self.pool.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name = ?", (table,))
        return bool(rows)

    # -- writes -----------------------------------------------------------------
    def insert_rows(self, collection: str, rows: Sequence[ImageRow]) -> InsertResult:
        """Insert rows with their own ids; existing ids and duplicate bytes are reported, not stored."""
        table = self._table(collection)
        rejected: dict[int, str] = {}
        # Image ids are 0..2^63-1 (operations.bounds), in every store alike.
        for r in rows:
            if not MIN_IMAGE_ID <= r.stored_id() <= MAX_IMAGE_ID:
                rejected[r.stored_id()] = f"image id {r.id} is outside {MIN_IMAGE_ID}..{MAX_IMAGE_ID}"
        rows = [r for r in rows if r.stored_id() not in rejected]
        ids = [r.stored_id() for r in rows]
        present_sha = self._existing_sha(table, ids)
        fresh = []
        for r in rows:
            if r.id in present_sha:
                if present_sha[r.id] != r.sha256:
                    # e.g. an upload took this id: never overwrite its vector with another image's
                    rejected[r.stored_id()] = f"id {r.id} already holds a different image"
                continue
            try:
                self._check_size(r)
                fresh.append(r)
            except PayloadTooLarge as exc:
                rejected[r.stored_id()] = exc.message
        now = int(time.time())
        limit = self.max_image_b64_bytes()
        self.pool.insert_many(
            table,
            (*_COLUMNS, "image_b64"),
            [
                (
                    r.id,
                    r.sha256,
                    r.mime,
                    r.width,
                    r.height,
                    r.source,
                    encode_tags(r.tags),
                    r.external_id,
                    r.created_at,
                    r.added_at or now,
                    0,
                    r.image_b64,
                )
                for r in fresh
            ],
            ignore=True,
            max_group_bytes=min(4 << 20, limit) if limit else 4 << 20,
            # base64 is ASCII: as bytes the server does not check it as utf8mb4.
            binary_columns=("image_b64",),
        )
        stored = self._existing(table, [r.stored_id() for r in fresh])
        dup_rows = [r for r in fresh if r.id not in stored]
        duplicate_of: dict[int, int] = {}
        for r in dup_rows:
            holder = self.find_by_sha(collection, r.sha256)
            if holder is not None:
                duplicate_of[r.stored_id()] = holder
        return InsertResult(
            [r.stored_id() for r in fresh if r.id in stored],
            sorted(i for i, sha in present_sha.items() if int(i) not in rejected),
            duplicate_of,
            rejected,
        )

    def insert_new(self, collection: str, row: ImageRow) -> tuple[int, bool]:
        """Insert an upload, letting the database pick the id.

        Returns (id, created). When the same bytes are already stored (even by
        a concurrent request) the existing id comes back with created=False.
        """
        table = self._table(collection)
        self._check_size(row)
        existing = self.find_by_sha(collection, row.sha256)
        if existing is not None:
            return existing, False
        try:
            statement = (
                f"INSERT INTO {table} (sha256, mime, width, height, source, tags, external_id, "
                f"created_at, added_at, indexed, image_b64) VALUES ({_placeholders(11)})"
            )
            with self.pool.transaction(statement) as cur:
                cur.execute(
                    self.pool.sql(statement),
                    (
                        row.sha256,
                        row.mime,
                        row.width,
                        row.height,
                        row.source,
                        encode_tags(row.tags),
                        row.external_id,
                        row.created_at,
                        row.added_at or int(time.time()),
                        0,
                        row.image_b64,
                    ),
                )
                new_id = int(cur.lastrowid)
            return new_id, True
        except Exception as exc:
            if not is_integrity_error(exc):
                raise
            existing = self.find_by_sha(collection, row.sha256)
            if existing is None:
                raise
            return existing, False

    def mark_indexed(self, collection: str, ids: Sequence[int]) -> None:
        table = self._table(collection)
        for start in range(0, len(ids), _CHUNK):
            chunk = check_int64(ids[start : start + _CHUNK], "image id")
            self.pool.execute(
                f"UPDATE {table} SET indexed = 1 WHERE id IN ({_placeholders(len(chunk))})", chunk
            )

    def unindexed_ids(self, collection: str, limit: int, added_before: int | None = None) -> list[int]:
        """Ids of rows still waiting for their vector, lowest first; with `added_before` (epoch
        seconds), only rows whose added_at (set at insert) is earlier: a dead add's, not a live
        one's (operations.ingest.HOLDER_DEAD_AFTER_S)."""
        table = self._table(collection)
        params: tuple[int, ...]
        if added_before is None:
            sql, params = f"SELECT id FROM {table} WHERE indexed = 0 ORDER BY id LIMIT ?", (int(limit),)
        else:
            sql = f"SELECT id FROM {table} WHERE indexed = 0 AND added_at < ? ORDER BY id LIMIT ?"
            params = (int(added_before), int(limit))
        return [int(r[0]) for r in self.pool.query(sql, params)]

    def indexed_ids(self, collection: str, ids: Sequence[int]) -> set[int]:
        table = self._table(collection)
        found: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = check_int64(ids[start : start + _CHUNK], "image id")
            found.update(
                int(r[0])
                for r in self.pool.query(
                    f"SELECT id FROM {table} WHERE indexed = 1 AND id IN ({_placeholders(len(chunk))})", chunk
                )
            )
        return found

    def delete(self, collection: str, ids: Sequence[int]) -> int:
        table = self._table(collection)
        removed = 0
        for start in range(0, len(ids), _CHUNK):
            chunk = check_int64(ids[start : start + _CHUNK], "image id")
            removed += self.pool.execute(
                f"DELETE FROM {table} WHERE id IN ({_placeholders(len(chunk))})", chunk
            )
            self.pool.execute(
                f"DELETE FROM {self._phash_table(collection)} WHERE id IN ({_placeholders(len(chunk))})",
                chunk,
            )
        return removed

    # -- reads ------------------------------------------------------------------
    def _existing_sha(self, table: str, ids: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            found.update(
                (int(r[0]), r[1])
                for r in self.pool.query(
                    f"SELECT id, sha256 FROM {table} WHERE id IN ({_placeholders(len(chunk))})", chunk
                )
            )
        return found

    def _existing(self, table: str, ids: list[int]) -> set[int]:
        found: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            found.update(
                int(r[0])
                for r in self.pool.query(
                    f"SELECT id FROM {table} WHERE id IN ({_placeholders(len(chunk))})", chunk
                )
            )
        return found

    def get_rows(self, collection: str, ids: Sequence[int], with_image: bool = False) -> dict[int, ImageRow]:
        table = self._table(collection)
        columns = ", ".join(_COLUMNS + (("image_b64",) if with_image else ()))
        out: dict[int, ImageRow] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = check_int64(ids[start : start + _CHUNK], "image id")
            for r in self.pool.query(
                f"SELECT {columns} FROM {table} WHERE id IN ({_placeholders(len(chunk))})", chunk
            ):
                out[int(r[0])] = ImageRow(
                    id=int(r[0]),
                    sha256=r[1],
                    mime=r[2],
                    width=int(r[3]),
                    height=int(r[4]),
                    source=r[5],
                    tags=decode_tags(r[6]),
                    external_id=r[7],
                    created_at=int(r[8]),
                    added_at=int(r[9]),
                    indexed=bool(r[10]),
                    image_b64=_as_text(r[11]) if with_image else None,
                )
        return out

    def find_by_sha(self, collection: str, sha256: str) -> int | None:
        rows = self.pool.query(f"SELECT id FROM {self._table(collection)} WHERE sha256 = ?", (sha256,))
        return int(rows[0][0]) if rows else None

    def ids_matching(self, collection: str, flt: SearchFilter, limit: int) -> list[int]:
        """Ids whose metadata matches `flt` (the same semantics as the Milvus filter)."""
        table = self._table(collection)
        where, params = self._where(flt)
        params.append(int(limit))
        return [
            int(r[0])
            for r in self.pool.query(f"SELECT id FROM {table} WHERE {where} ORDER BY id LIMIT ?", params)
        ]

    def count_matching(self, collection: str, flt: SearchFilter) -> int:
        """How many images match `flt` (the semantics of `ids_matching`). Retention counts
        first: a table made before the created_at index gets it here."""
        table = self._table(collection)
        self._ensure_created_index(table_name(collection))
        where, params = self._where(flt)
        return int(self.pool.query(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)[0][0])

    def _where(self, flt: SearchFilter) -> tuple[str, list[object]]:
        flt.check()  # the same values are refused as by the Milvus filter builder
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        if flt.sources:
            where.append(f"source IN ({_placeholders(len(flt.sources))})")
            params += list(flt.sources)
        if flt.tags:
            # "_" is a LIKE wildcard and may appear in a tag: escape it.
            where.append("(" + " OR ".join(["tags LIKE ? ESCAPE '!'"] * len(flt.tags)) + ")")
            params += [f"%,{t.replace('_', '!_')},%" for t in flt.tags]
        if flt.created_from is not None:
            where.append("created_at >= ?")
            params.append(int(flt.created_from))
        if flt.created_to is not None:
            where.append("created_at <= ?")
            params.append(int(flt.created_to))
        return " AND ".join(where), params

    def count(self, collection: str) -> int:
        return int(self.pool.query(f"SELECT COUNT(*) FROM {self._table(collection)}")[0][0])

    def close(self) -> None:
        self.pool.close()
