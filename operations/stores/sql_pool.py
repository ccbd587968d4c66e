"""Pooled DB-API connections for MySQL (pymysql) and SQLite, one interface.

Statements are written once with `?` placeholders; for pymysql they are
rewritten to `%s`. Only constant SQL text from this package is rewritten, and
every value is passed as a bound parameter.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import unquote, urlparse

import pymysql

from operations.errors import DependencyUnavailable

log = logging.getLogger(__name__)

# Connections older than this are replaced: MySQL closes idle ones
# ("server has gone away") after wait_timeout.
RECYCLE_S = 1800
DEADLOCK_RETRIES = 3


@dataclass(frozen=True)
class MySQLParams:
    host: str
    port: int
    user: str
    password: str
    database: str
    unix_socket: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "MySQLParams":
        parsed = urlparse(url)
        if parsed.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
            raise ValueError(f"MYSQL_URL must start with mysql://, got {parsed.scheme!r}")
        database = parsed.path.lstrip("/")
        if not database:
            raise ValueError("MYSQL_URL needs a database name: mysql://user:pass@host:port/db")
        return cls(parsed.hostname or "127.0.0.1", parsed.port or 3306, unquote(parsed.username or "root"),
                   unquote(parsed.password or ""), database)


class SqlPool:
    """A small pool; `connection()` yields a live connection or raises 503."""

    def __init__(self, mysql_url: str = "", sqlite_path: Path | None = None,
                 timeout_s: float = 10.0, size: int = 4) -> None:
        self.dialect = "mysql" if mysql_url else "sqlite"
        self.timeout = timeout_s
        self._mysql = MySQLParams.from_url(mysql_url) if mysql_url else None
        self._sqlite_path = sqlite_path
        if self._sqlite_path is not None:
            Path(self._sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        self._idle: queue.LifoQueue = queue.LifoQueue(maxsize=size)
        self._slots = threading.BoundedSemaphore(size)
        # Set once a server refuses character_set_client=binary, so later
        # batches do not ask again (see _binary_client).
        self._binary_refused = False

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "mysql" else statement

    def _open(self) -> Any:
        try:
            if self._mysql is not None:
                p = self._mysql
                conn = pymysql.connect(
                    host=p.host, port=p.port, user=p.user, password=p.password, database=p.database,
                    charset="utf8mb4", autocommit=True, connect_timeout=max(1, int(self.timeout)),
                    # A dataset may hold image id 0; without this MySQL would
                    # store it under the next auto-increment id instead.
                    init_command="SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')",
                    read_timeout=max(1, int(self.timeout)), write_timeout=max(1, int(self.timeout)),
                )
            else:
                conn = sqlite3.connect(str(self._sqlite_path), timeout=self.timeout,
                                       isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        except (pymysql.Error, sqlite3.Error, OSError) as exc:
            raise DependencyUnavailable(self.dialect, str(exc)[:300]) from exc
        if self._mysql is not None:
            conn._opened_at = time.monotonic()  # type: ignore[attr-defined]
        return conn

    def _healthy(self, conn: Any) -> bool:
        if self._mysql is None:
            return True
        if time.monotonic() - getattr(conn, "_opened_at", 0) > RECYCLE_S:
            return False
        try:
            conn.ping(reconnect=False)  # pre-ping: a restarted server killed it
            return True
        except pymysql.Error:
            return False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self.timeout):
            raise DependencyUnavailable(self.dialect, "all SQL connections busy")
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
                if not self._healthy(conn):
                    _close_quietly(conn)
                    conn = None
            except queue.Empty:
                pass
            if conn is None:
                conn = self._open()
            try:
                yield conn
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError, sqlite3.OperationalError) as exc:
                _close_quietly(conn)
                conn = None
                if isinstance(exc, sqlite3.OperationalError) and "locked" not in str(exc):
                    raise
                raise DependencyUnavailable(self.dialect, str(exc)[:300]) from exc
            except BaseException:
                # Leave no half-finished transaction on a pooled connection.
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise
            if conn is not None:
                self._idle.put_nowait(conn)
                conn = None
        finally:
            if conn is not None:
                _close_quietly(conn)
            self._slots.release()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside BEGIN/COMMIT; rolled back on any error."""
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        with self.connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(self.sql(statement), tuple(params))
                return cur.rowcount
            finally:
                cur.close()

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]], *, bulk_literals: bool = False) -> int:
        """All rows in one transaction; retried when MySQL picks it as a deadlock
        victim (it was rolled back whole, so running it again is safe).

        `bulk_literals` (MySQL): the statement's values are read by the server
        as raw bytes (character_set_client = binary) instead of utf8mb4. With
        base64 images of ~67 KB a row, about half of mariadbd's CPU went into
        lexing those literals character by character as utf8mb4 (perf, bench/
        README.md); as bytes the lexer does not look for multi-byte characters.
        Text values are sent as UTF-8, so text columns still get the same
        characters. The connection's own character set is restored after.
        """
        if not rows:
            return 0
        params = [tuple(r) for r in rows]
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                with self.transaction() as cur:
                    if bulk_literals and self.dialect == "mysql" and not self._binary_refused:
                        with _binary_client(cur, self):
                            cur.executemany(self.sql(statement), params)
                            # Read before the restoring SET, which is then the
                            # cursor's last statement (its rowcount is 0).
                            count = cur.rowcount
                    else:
                        cur.executemany(self.sql(statement), params)
                        count = cur.rowcount
                return count
            except DependencyUnavailable as exc:
                if attempt == DEADLOCK_RETRIES or not _is_deadlock(exc.__cause__):
                    raise
                log.info("deadlock on a batch insert; retrying (%d)", attempt + 1)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(self.sql(statement), tuple(params))
                return list(cur.fetchall())
            finally:
                cur.close()

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return


# Saved in the same statement that switches, so restoring is exact.
_SWITCH_TO_BINARY = ("SET @imgsearch_cs_client = @@character_set_client, "
                     "@imgsearch_collation = @@collation_connection, "
                     "character_set_client = binary, character_set_connection = binary")
_SWITCH_BACK = "SET character_set_client = @imgsearch_cs_client, collation_connection = @imgsearch_collation"


@contextlib.contextmanager
def _binary_client(cur: Any, pool: SqlPool) -> Iterator[None]:
    """Let the server read statements as bytes; put the session back after.

    The session is restored only when the batch succeeded: after an error the
    pool closes the connection anyway, and a restoring SET on a broken
    connection would replace the batch's own error (which the deadlock retry
    inspects). A server that refuses the switch with an error of its own (codes
    below 2000; a failed SET changes nothing) gets this batch and every later
    one as utf8mb4 text, as before: slower, same rows. Client-side errors (lost
    connection, 2006/2013) are not a refusal and propagate.
    """
    try:
        cur.execute(_SWITCH_TO_BINARY)
    except pymysql.err.MySQLError as exc:
        if not _is_server_error(exc):
            raise
        log.warning("MySQL refused character_set_client=binary (%s); batch inserts stay utf8mb4", exc)
        pool._binary_refused = True
        yield
        return
    yield
    cur.execute(_SWITCH_BACK)


def _is_server_error(exc: BaseException) -> bool:
    # MySQL numbers its server errors below 2000 and its client errors
    # (CR_SERVER_GONE_ERROR 2006, CR_SERVER_LOST 2013, ...) from 2000.
    code = exc.args[0] if exc.args else None
    return isinstance(code, int) and 0 < code < 2000


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _is_deadlock(exc: BaseException | None) -> bool:
    # 1213: deadlock found; 1205: lock wait timeout (both roll the statement back).
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in (1213, 1205)


def is_integrity_error(exc: BaseException) -> bool:
    return isinstance(exc, (pymysql.err.IntegrityError, sqlite3.IntegrityError))
