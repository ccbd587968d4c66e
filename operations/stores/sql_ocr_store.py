"""Text read from images (OCR), stored in SQL and indexed for CJK substring search.

Two tables per collection with OCR enabled (their existence is the switch):
- `ocr_<collection>`: one row per image read: status (`ok` / `failed`), the
  lines as JSON (text, box, confidence), the normalised text of the lines kept
  for search, the error of a failed read;
- `ocrg_<collection>`: a character n-gram index, one row per distinct (gram,
  image): every single character and every pair of adjacent characters of each
  indexed line.

Why an n-gram table of our own: it is the one path that works the same on
MySQL 8, MariaDB and SQLite. MariaDB has no ngram FULLTEXT parser, MySQL's
needs its own syntax, SQLite's FTS5 trigram cannot find one- or two-character
words (most Chinese words are two characters). A substring query of n >= 2
characters needs every one of its bigrams in the image's text: the candidates
come from the (gram, image_id) primary key with bound parameters, then the
substring itself is checked on the stored text, so the answer is exact.
The index holds about two rows per character read (distinct ones only).
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from operations.names import validate_name
from operations.stores.sql_image_store import table_name as image_table
from operations.stores.sql_pool import SqlPool

# One line of text is at most this long in the index (a box of text is a line,
# so real lines are far shorter); the stored JSON keeps the whole line.
MAX_LINE_CHARS = 512
# Grams of one query: a query's bigrams are all looked up at once.
MAX_QUERY_GRAMS = 256
_CHUNK = 500
ENABLED_TTL_S = 2.0


def normalize_text(text: str) -> str:
    """The form text is indexed and searched in: NFKC (full-width to half-width,
    ￥ to ¥), lower case, no whitespace, so a query matches however the line was spaced."""
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def grams(norm: str) -> set[str]:
    """Every character and every pair of adjacent characters of a normalised line."""
    out = set(norm)
    out.update(norm[i : i + 2] for i in range(len(norm) - 1))
    return out


def query_grams(norm: str) -> set[str]:
    """The grams a match must contain: the bigrams of the query (its one character if only one)."""
    if len(norm) == 1:
        return {norm}
    return {norm[i : i + 2] for i in range(len(norm) - 1)}


@dataclass(frozen=True)
class OcrLine:
    """One line of text found in an image: its text, box (4 corner points) and confidence."""

    text: str
    box: tuple[tuple[float, float], ...]
    confidence: float

    def as_dict(self) -> dict:
        return {"text": self.text, "box": [list(p) for p in self.box], "confidence": self.confidence}


@dataclass
class OcrRecord:
    """What OCR stored for one image."""

    image_id: int
    status: str  # ok | failed
    lines: list[OcrLine] = field(default_factory=list)
    error: str | None = None
    updated_at: int = 0

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass(frozen=True)
class TextMatch:
    """An image whose text contains the query: the line that matched and its confidence."""

    image_id: int
    line: str
    confidence: float


def ocr_table(collection: str) -> str:
    return "ocr_" + validate_name(collection)


def gram_table(collection: str) -> str:
    return "ocrg_" + validate_name(collection)


def _ddl(dialect: str, table: str, grams_table: str) -> list[str]:
    if dialect == "mysql":
        return [
            f"""CREATE TABLE IF NOT EXISTS `{table}` (
            image_id BIGINT NOT NULL PRIMARY KEY,
            status VARCHAR(16) NOT NULL,
            lines_json LONGTEXT NOT NULL,
            norm_text LONGTEXT NOT NULL,
            error VARCHAR(512) NULL,
            updated_at BIGINT NOT NULL DEFAULT 0
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
            # utf8mb4_bin: the default collations call some different characters equal
            # (case, accents, emoji), which would merge grams and break the primary key.
            f"""CREATE TABLE IF NOT EXISTS `{grams_table}` (
            gram VARCHAR(2) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            image_id BIGINT NOT NULL,
            PRIMARY KEY (gram, image_id),
            KEY ix_image (image_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        ]
    return [
        f"""CREATE TABLE IF NOT EXISTS "{table}" (
            image_id INTEGER PRIMARY KEY,
            status TEXT NOT NULL,
            lines_json TEXT NOT NULL,
            norm_text TEXT NOT NULL,
            error TEXT NULL,
            updated_at INTEGER NOT NULL DEFAULT 0)""",
        f"""CREATE TABLE IF NOT EXISTS "{grams_table}" (
            gram TEXT NOT NULL,
            image_id INTEGER NOT NULL,
            PRIMARY KEY (gram, image_id)) WITHOUT ROWID""",
        f'CREATE INDEX IF NOT EXISTS "ix_{grams_table}_img" ON "{grams_table}" (image_id)',
    ]


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


class SqlOcrStore:
    """OCR text of the images of a collection, beside its image table (same SQL database)."""

    def __init__(self, pool: SqlPool) -> None:
        self.pool = pool
        # collection -> (enabled, when checked): a search or add asks every time, the catalogue
        # is read at most every ENABLED_TTL_S; this process's own enable/drop take effect at once.
        self._enabled: dict[str, tuple[bool, float]] = {}

    def _q(self, name: str) -> str:
        # Identifiers cannot be bound; the name was validated by ocr_table()/gram_table().
        return f"`{name}`" if self.pool.dialect == "mysql" else f'"{name}"'

    def _tables(self, collection: str) -> tuple[str, str]:
        return self._q(ocr_table(collection)), self._q(gram_table(collection))

    def enable(self, collection: str) -> None:
        """Create the collection's OCR tables (idempotent): from now on its images are read."""
        for statement in _ddl(self.pool.dialect, ocr_table(collection), gram_table(collection)):
            self.pool.execute(statement)
        self._enabled[collection] = (True, time.monotonic())

    def enabled(self, collection: str) -> bool:
        """Whether OCR is on for `collection` (its tables exist; another process's change is seen
        within ENABLED_TTL_S)."""
        known = self._enabled.get(collection)
        if known is not None and time.monotonic() - known[1] < ENABLED_TTL_S:
            return known[0]
        table = ocr_table(collection)
        if self.pool.dialect == "mysql":
            rows = self.pool.query(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                (table,),
            )
        else:
            rows = self.pool.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name = ?", (table,))
        self._enabled[collection] = (bool(rows), time.monotonic())
        return bool(rows)

    def drop(self, collection: str) -> None:
        for table in self._tables(collection):
            self.pool.execute(f"DROP TABLE IF EXISTS {table}")
        self._enabled[collection] = (False, time.monotonic())

    def copy_rows(self, collection: str, source: str, ids: Sequence[int]) -> None:
        """Copy what was read from the images `ids` of `source` into `collection` (a rebuild:
        the text in an image does not depend on the CLIP model); ids already there are kept."""
        (dst, dst_grams), (src, src_grams) = self._tables(collection), self._tables(source)
        ignore = "INSERT IGNORE" if self.pool.dialect == "mysql" else "INSERT OR IGNORE"
        cols = "image_id, status, lines_json, norm_text, error, updated_at"
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            marks = _placeholders(len(chunk))
            self.pool.execute(
                f"{ignore} INTO {dst} ({cols}) SELECT {cols} FROM {src} WHERE image_id IN ({marks})", chunk
            )
            self.pool.execute(
                f"{ignore} INTO {dst_grams} (gram, image_id) "
                f"SELECT gram, image_id FROM {src_grams} WHERE image_id IN ({marks})",
                chunk,
            )

    # -- writes -----------------------------------------------------------------
    def put(
        self,
        collection: str,
        image_id: int,
        lines: Sequence[OcrLine],
        *,
        error: str | None = None,
        min_confidence: float = 0.0,
    ) -> None:
        """Store what was read from one image (replacing an earlier read) and index its lines.

        Lines under `min_confidence` are kept in the record but not indexed for search.
        """
        table, gtable = self._tables(collection)
        image_id = int(image_id)
        norms = [normalize_text(line.text)[:MAX_LINE_CHARS] for line in lines]
        indexed = [n for n, line in zip(norms, lines, strict=True) if line.confidence >= min_confidence and n]
        all_grams: set[str] = set()
        for n in indexed:
            all_grams |= grams(n)
        status = "failed" if error is not None else "ok"
        lines_json = json.dumps([line.as_dict() for line in lines], ensure_ascii=False)
        with self.pool.transaction(f"replace the OCR lines of one image in {table} and {gtable}") as cur:
            cur.execute(self.pool.sql(f"DELETE FROM {gtable} WHERE image_id = ?"), (image_id,))
            cur.execute(self.pool.sql(f"DELETE FROM {table} WHERE image_id = ?"), (image_id,))
            cur.execute(
                self.pool.sql(
                    f"INSERT INTO {table} (image_id, status, lines_json, norm_text, error, updated_at) "
                    f"VALUES ({_placeholders(6)})"
                ),
                (
                    image_id,
                    status,
                    lines_json,
                    "\n".join(indexed),
                    (error or None) and error[:512],
                    int(time.time()),
                ),
            )
            if all_grams:
                cur.executemany(
                    self.pool.sql(f"INSERT INTO {gtable} (gram, image_id) VALUES (?, ?)"),
                    [(g, image_id) for g in sorted(all_grams)],
                )

    def delete(self, collection: str, ids: Sequence[int]) -> None:
        """Forget the text of deleted images."""
        table, gtable = self._tables(collection)
        for start in range(0, len(ids), _CHUNK):
            chunk = [int(i) for i in ids[start : start + _CHUNK]]
            for t in (gtable, table):
                self.pool.execute(f"DELETE FROM {t} WHERE image_id IN ({_placeholders(len(chunk))})", chunk)

    # -- reads ------------------------------------------------------------------
    def get(self, collection: str, ids: Sequence[int]) -> dict[int, OcrRecord]:
        table, _ = self._tables(collection)
        out: dict[int, OcrRecord] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = [int(i) for i in ids[start : start + _CHUNK]]
            for r in self.pool.query(
                f"SELECT image_id, status, lines_json, error, updated_at FROM {table} "
                f"WHERE image_id IN ({_placeholders(len(chunk))})",
                chunk,
            ):
                out[int(r[0])] = _record(r)
        return out

    def page(self, collection: str, after_id: int, limit: int) -> list[OcrRecord]:
        """Records with image_id > after_id, in id order (a scan pages through all of them)."""
        table, _ = self._tables(collection)
        return [
            _record(r)
            for r in self.pool.query(
                f"SELECT image_id, status, lines_json, error, updated_at FROM {table} "
                "WHERE image_id > ? AND status = 'ok' ORDER BY image_id LIMIT ?",
                (int(after_id), int(limit)),
            )
        ]

    def unread_ids(self, collection: str, after_id: int, limit: int) -> list[int]:
        """Indexed images with no OCR record, id > after_id, in id order (the backlog of a job)."""
        table, _ = self._tables(collection)
        images = self._q(image_table(collection))
        return [
            int(r[0])
            for r in self.pool.query(
                f"SELECT i.id FROM {images} i LEFT JOIN {table} o ON o.image_id = i.id "
                "WHERE o.image_id IS NULL AND i.indexed = 1 AND i.id > ? ORDER BY i.id LIMIT ?",
                (int(after_id), int(limit)),
            )
        ]

    def counts(self, collection: str) -> dict[str, int]:
        """How many images were read (`ok`) and how many reads failed."""
        table, _ = self._tables(collection)
        out = {"ok": 0, "failed": 0}
        for status, n in self.pool.query(f"SELECT status, COUNT(*) FROM {table} GROUP BY status"):
            out[str(status)] = int(n)
        return out

    def search(self, collection: str, query: str, limit: int, candidates: int) -> list[TextMatch]:
        """Images whose indexed text contains `query` (normalised), best confidence first.

        At most `candidates` images holding all the query's grams are checked
        (newest ids first), so a very common query stays bounded.
        """
        norm = normalize_text(query)
        if not norm:
            return []
        needed = sorted(query_grams(norm))[:MAX_QUERY_GRAMS]
        table, gtable = self._tables(collection)
        rows = self.pool.query(
            f"SELECT image_id FROM {gtable} WHERE gram IN ({_placeholders(len(needed))}) "
            "GROUP BY image_id HAVING COUNT(*) = ? ORDER BY image_id DESC LIMIT ?",
            [*needed, len(needed), int(candidates)],
        )
        ids = [int(r[0]) for r in rows]
        matches: list[TextMatch] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            for r in self.pool.query(
                f"SELECT image_id, lines_json, norm_text FROM {table} "
                f"WHERE image_id IN ({_placeholders(len(chunk))})",
                chunk,
            ):
                if norm not in (r[2] or ""):
                    continue
                best = _best_line(json.loads(r[1]), norm)
                if best is not None:
                    matches.append(TextMatch(int(r[0]), best[0], best[1]))
        matches.sort(key=lambda m: (-m.confidence, -m.image_id))
        return matches[:limit]


def _best_line(lines: list[dict], norm: str) -> tuple[str, float] | None:
    found = [
        (line["text"], float(line["confidence"]))
        for line in lines
        if norm in normalize_text(line["text"])[:MAX_LINE_CHARS]
    ]
    return max(found, key=lambda t: t[1]) if found else None


def _record(r: tuple) -> OcrRecord:
    lines = [
        OcrLine(d["text"], tuple(tuple(p) for p in d["box"]), float(d["confidence"]))
        for d in json.loads(r[2])
    ]
    return OcrRecord(int(r[0]), str(r[1]), lines, r[3], int(r[4]))
