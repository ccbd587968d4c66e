"""Pooled DB-API connections for MySQL (pymysql) and SQLite, one interface.

Statements are written once with `?` placeholders; for pymysql they are
rewritten to `%s`. Only constant SQL text from this package is rewritten, and
every value is passed as a bound parameter.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pymysql

from operations import deadline
from operations.errors import DependencyUnavailable, NotFound
from operations.stores import mysql_prepared
from operations.stores.outage import OutageLog

log = logging.getLogger(__name__)

# The database's clock in seconds since the epoch, as an SQL expression: leases (jobs, names,
# writers) are measured by it, so the clocks of the machines holding them do not matter.
# MySQL: UTC_TIMESTAMP does not depend on the session time zone and TIMESTAMPDIFF has no 2038
# limit (UNIX_TIMESTAMP has on older servers). SQLite: the clock of the one machine with the file.
DB_NOW = {
    "mysql": "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) / 1000000.0)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
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
    def from_url(cls, url: str) -> MySQLParams:
        parsed = urlparse(url)
        if parsed.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
            raise ValueError(f"MYSQL_URL must start with mysql://, got {parsed.scheme!r}")
        database = parsed.path.lstrip("/")
        if not database:
            raise ValueError("MYSQL_URL needs a database name: mysql://user:pass@host:port/db")
        return cls(
            parsed.hostname or "127.0.0.1",
            parsed.port or 3306,
            unquote(parsed.username or "root"),
            unquote(parsed.password or ""),
            database,
        )


class _DeadlineConnection(pymysql.connections.Connection):
    """A pymysql connection whose every read and write waits at most until the
    deadline of the store call in progress (operations/deadline.py), not a
    fresh read timeout per packet: a frozen server costs a call one timeout,
    however many packets, pings and statements the call has left."""

    def __init__(self, *args: Any, store: str = "mysql", **kwargs: Any) -> None:
        self._deadline_store = store
        super().__init__(*args, **kwargs)

    def _bounded(self, configured: float | None) -> float | None:
        d = deadline.current(self._deadline_store)
        if d is None:
            return configured
        # Rounded up to 0.1 s so the socket timeout is not reset for every packet.
        return max(0.1, math.ceil(d.left() * 10) / 10)

    @property
    def _read_timeout(self) -> float | None:
        return self._bounded(self._configured_read_timeout)

    @_read_timeout.setter
    def _read_timeout(self, value: float | None) -> None:
        self._configured_read_timeout = value

    @property
    def _write_timeout(self) -> float | None:
        return self._bounded(self._configured_write_timeout)

    @_write_timeout.setter
    def _write_timeout(self, value: float | None) -> None:
        self._configured_write_timeout = value


class SqlPool:
    """A small pool; `connection()` yields a live connection or raises 503.

    Each outermost `connection()` (or transaction, or retried batch) is one
    store call with one deadline of `timeout_s` (operations/deadline.py): the
    wait for a free slot, the pre-ping, a reconnect and the statements share it.
    """

    def __init__(
        self, mysql_url: str = "", sqlite_path: Path | None = None, timeout_s: float = 10.0, size: int = 4
    ) -> None:
        self.dialect = "mysql" if mysql_url else "sqlite"
        self.timeout = timeout_s
        self._mysql = MySQLParams.from_url(mysql_url) if mysql_url else None
        self._sqlite_path = sqlite_path
        if self._sqlite_path is not None:
            Path(self._sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        self._idle: queue.LifoQueue = queue.LifoQueue(maxsize=size)
        self._slots = threading.BoundedSemaphore(size)
        # Set once a server refuses prepared statements, so later batches do
        # not ask again (see insert_many).
        self._prepare_refused = False
        self.outage = OutageLog(self.dialect, log)

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "mysql" else statement

    def _open(self, d: deadline.Deadline) -> Any:
        conn: Any
        try:
            if self._mysql is not None:
                p = self._mysql
                conn = _DeadlineConnection(
                    store=self.dialect,
                    host=p.host,
                    port=p.port,
                    user=p.user,
                    password=p.password,
                    database=p.database,
                    charset="utf8mb4",
                    autocommit=True,
                    connect_timeout=d.left_or_raise(),
                    # A dataset may hold image id 0; without this MySQL would
                    # store it under the next auto-increment id instead.
                    init_command="SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')",
                    read_timeout=self.timeout,
                    write_timeout=self.timeout,
                )
            else:
                conn = sqlite3.connect(
                    str(self._sqlite_path),
                    timeout=self.timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        except (pymysql.Error, sqlite3.Error, OSError) as exc:
            raise DependencyUnavailable(self.dialect, str(exc)[:300]) from exc
        if self._mysql is not None:
            conn._opened_at = time.monotonic()
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
        with deadline.store_call(self.dialect, self.timeout) as d:
            try:
                with self._connection(d) as conn:
                    yield conn
            except DependencyUnavailable as exc:
                if _is_outage(exc):
                    self.outage.failed(exc.message + _during())
                raise
            self.outage.succeeded()

    @contextlib.contextmanager
    def _connection(self, d: deadline.Deadline) -> Iterator[Any]:
        if not self._slots.acquire(timeout=max(0.0, d.left())):
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
                conn = self._open(d)
            try:
                yield conn
            except (pymysql.err.ProgrammingError, sqlite3.OperationalError) as exc:
                # A table that is gone was dropped, often by another replica after this
                # process had seen it: the collection is not there (404), nothing is down.
                if not _missing_table(exc):
                    if isinstance(exc, pymysql.err.ProgrammingError) or "locked" not in str(exc):
                        raise
                    _close_quietly(conn)
                    conn = None
                    raise DependencyUnavailable(self.dialect, str(exc)[:300]) from exc
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise NotFound(f"collection does not exist ({str(exc)[:200]})") from exc
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                _close_quietly(conn)
                conn = None
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
    def transaction(self, statement: str) -> Iterator[Any]:
        """A cursor inside BEGIN/COMMIT; rolled back on any error. `statement` (its main
        statement, placeholders only) names it in the outage's "down" line."""
        with _named_on_failure(statement), self._transaction() as cur:
            yield cur

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
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
        with _named_on_failure(statement), self.connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(self.sql(statement), tuple(params))
                return cur.rowcount
            finally:
                cur.close()

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> int:
        """All rows in one transaction (deadlock victims retried, see _with_retries)."""
        if not rows:
            return 0
        params = [tuple(r) for r in rows]

        def work(cur: Any) -> int:
            cur.executemany(self.sql(statement), params)
            return cur.rowcount

        with _named_on_failure(statement):
            return self._with_retries(work)

    def insert_many(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        ignore: bool = False,
        max_group_bytes: int = 4 << 20,
        binary_columns: Sequence[str] = (),
    ) -> int:
        """INSERT [IGNORE] of many rows in one transaction; the inserted count.

        `table` must be a validated, quoted name. On MySQL the rows go through
        server-side prepared multi-row INSERTs (mysql_prepared: values are
        sent as bytes, never lexed: with ~67 KB base64 images the lexer was
        most of mariadbd's CPU). A server that refuses prepared statements
        (`_PREPARE_REFUSALS`, e.g. behind a proxy) gets ordinary executemany
        from then on: slower, same rows. SQLite: executemany. `max_group_bytes`: one
        prepared execution carries at most this many bytes of values (or one
        larger row alone); keep it under the server's max_allowed_packet.
        `binary_columns` (MySQL): str values of these columns are sent as
        bytes, for binary columns (LONGBLOB) that hold ASCII such as base64.
        """
        if not rows:
            return 0
        names = ", ".join(columns)
        params = [tuple(r) for r in rows]
        if self.dialect == "sqlite" or self._prepare_refused:
            verb = (
                ("INSERT IGNORE" if self.dialect == "mysql" else "INSERT OR IGNORE") if ignore else "INSERT"
            )
            return self.executemany(
                f"{verb} INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", params
            )

        def work(cur: Any) -> int:
            return mysql_prepared.insert_rows(
                cur.connection,
                f"{'IGNORE ' if ignore else ''}INTO {table}",
                names,
                params,
                max_bytes=max_group_bytes,
                binary=[columns.index(c) for c in binary_columns],
            )

        try:
            with _named_on_failure(f"INSERT INTO {table} ({names}) [prepared, {len(params)} rows]"):
                return self._with_retries(work)
        except (DependencyUnavailable, pymysql.err.MySQLError) as exc:
            # The pool reports server errors of the OperationalError kind as
            # DependencyUnavailable (503), with the server's error as cause.
            cause = exc.__cause__ if isinstance(exc, DependencyUnavailable) else exc
            if not _refused_prepare(cause):
                raise
            log.warning("MySQL refused a prepared INSERT (%s); batch inserts use the text protocol", exc)
            self._prepare_refused = True
            return self.insert_many(
                table,
                columns,
                rows,
                ignore=ignore,
                max_group_bytes=max_group_bytes,
                binary_columns=binary_columns,
            )

    def _with_retries(self, work: Callable[[Any], int]) -> int:
        """`work(cursor)` inside one transaction, retried when MySQL picks it as
        a deadlock victim (it was rolled back whole, so running it again is safe).
        The attempts share one deadline."""
        with deadline.store_call(self.dialect, self.timeout):
            for attempt in range(DEADLOCK_RETRIES + 1):
                try:
                    with self._transaction() as cur:  # named by the caller
                        return work(cur)
                except DependencyUnavailable as exc:
                    if attempt == DEADLOCK_RETRIES or not _is_deadlock(exc.__cause__):
                        raise
                    log.info("deadlock on a batch insert; retrying (%d)", attempt + 1)
                    time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        with _named_on_failure(statement), self.connection() as conn:
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


# The statement a pool method is running, for the outage's "down" line: the driver's own words
# ("Lost connection to MySQL server during query (timed out)") do not say which statement met
# the fault. Statements hold placeholders, never values, so the log carries no user data.
_STATEMENT: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar(
    "sql_statement", default=None
)


@contextlib.contextmanager
def _named_on_failure(statement: str) -> Iterator[None]:
    token = _STATEMENT.set((" ".join(statement.split())[:200], time.monotonic()))
    try:
        yield
    finally:
        _STATEMENT.reset(token)


def _during() -> str:
    current = _STATEMENT.get()
    if current is None:
        return ""
    statement, started = current
    return f" (during {statement}, after {time.monotonic() - started:.1f} s)"


def _refused_prepare(exc: BaseException | None) -> bool:
    # Only the server's own refusal (e.g. 1295 "not supported in the prepared
    # statement protocol" behind a proxy); a lost connection (client errors
    # from 2000) or a bad row (duplicate key, data too long) is not one.
    if not isinstance(exc, pymysql.err.MySQLError) or not exc.args:
        return False
    return exc.args[0] in _PREPARE_REFUSALS


# ER_UNSUPPORTED_PS and ER_UNKNOWN_COM_ERROR (how a server or proxy without
# the binary protocol answers COM_STMT_*). Not 1461 (the server-wide
# max_prepared_stmt_count reached): that passes, so it fails only this batch.
_PREPARE_REFUSALS = {1295, 1047}


def _is_outage(exc: DependencyUnavailable) -> bool:
    # The server could not be reached or did not answer in time (client errors
    # 2000+, socket errors, an exhausted deadline or pool), not a statement the
    # server refused (a deadlock, a lock wait: codes below 2000).
    cause = exc.__cause__
    if isinstance(cause, pymysql.err.MySQLError) and cause.args and isinstance(cause.args[0], int):
        return cause.args[0] >= 2000
    return not isinstance(cause, sqlite3.Error) or "locked" not in str(cause)


def _missing_table(exc: BaseException) -> bool:
    # MySQL 1146 ER_NO_SUCH_TABLE; SQLite says it in words.
    if isinstance(exc, pymysql.err.ProgrammingError):
        return bool(exc.args) and exc.args[0] == 1146
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such table")


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _is_deadlock(exc: BaseException | None) -> bool:
    # 1213: deadlock found; 1205: lock wait timeout (both roll the statement back).
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in (1213, 1205)


def is_integrity_error(exc: BaseException) -> bool:
    return isinstance(exc, (pymysql.err.IntegrityError, sqlite3.IntegrityError))
