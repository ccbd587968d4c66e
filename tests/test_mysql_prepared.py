"""Prepared multi-row INSERTs (binary protocol) against the real MariaDB."""

from __future__ import annotations

import pymysql
import pytest

from operations.errors import DependencyUnavailable
from operations.stores import mysql_prepared
from operations.stores.sql_pool import SqlPool
from tests.stack import unique

COLUMNS = ("id", "label", "note", "data", "text_blob")


@pytest.fixture
def pool(request):
    db = request.getfixturevalue("mariadb")
    p = SqlPool(db.create_database(), None, 5, 1)  # one connection: every call reuses it
    yield p
    p.close()


def _table(pool: SqlPool) -> str:
    name = f"`{unique('prep')}`"
    pool.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, label VARCHAR(64) NOT NULL, "
                 "note VARCHAR(64) NULL, data LONGBLOB NOT NULL, text_blob LONGTEXT NOT NULL) "
                 "DEFAULT CHARSET=utf8mb4")
    return name


def test_values_come_back_exactly_as_sent(pool):
    """Every kind of value the stores send: ints at int64's ends, NULL, Chinese
    text, quotes/backslashes/NUL/tab/newline (nothing is escaped: nothing is
    lexed), every byte value into a LONGBLOB, a 1 MB base64-like string, empty
    strings."""
    table = _table(pool)
    every_byte = bytes(range(256)) * 3
    rows = [
        (0, "", None, b"", ""),
        (-(1 << 63), "图片库 上海", "货号-1", every_byte, "红色,夏季_新品"),
        ((1 << 63) - 1, "it's \\ \"q\" \t\n\x00 end", "\U0001F600 emoji", b"\x00'\\", "a" * 1_000_000),
    ]
    executions = "SHOW SESSION STATUS LIKE 'Com_stmt_execute'"
    before = int(pool.query(executions)[0][1])
    assert pool.insert_many(table, COLUMNS, rows) == 3
    assert int(pool.query(executions)[0][1]) == before + 1  # one prepared multi-row INSERT
    got = pool.query(f"SELECT id, label, note, data, text_blob FROM {table} ORDER BY id")
    assert [tuple(g) for g in got] == sorted(rows)


def test_groups_respect_row_and_byte_limits_and_ignore_counts_only_new_rows(pool):
    table = _table(pool)
    executed = []
    real = mysql_prepared._run

    def counting(conn, table_sql, columns, row_marks, group):
        executed.append(len(group))
        return real(conn, table_sql, columns, row_marks, group)

    rows = [(i, f"r{i}", None, b"x" * 1000, "t") for i in range(40)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mysql_prepared, "_run", counting)
        assert pool.insert_many(table, COLUMNS, rows, max_group_bytes=5 * 1004) == 40
    assert executed == [5] * 8  # 1,004 bytes a row: 5 rows fit in 5,020

    executed.clear()
    again = rows[35:] + [(40 + i, f"r{40 + i}", None, b"y", "t") for i in range(20)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mysql_prepared, "_run", counting)
        assert pool.insert_many(table, COLUMNS, again, ignore=True) == 20  # 5 already there
    assert executed == [16, 9]  # at most 16 rows an execution
    assert pool.query(f"SELECT COUNT(*) FROM {table}")[0][0] == 60


def test_a_failing_batch_inserts_nothing_and_the_pool_goes_on(pool):
    """Without IGNORE a duplicate key fails the whole batch (one transaction);
    the next batch on the same pool works."""
    table = _table(pool)
    pool.insert_many(table, COLUMNS, [(1, "a", None, b"", "")])
    with pytest.raises(pymysql.err.IntegrityError):
        pool.insert_many(table, COLUMNS, [(2, "b", None, b"", ""), (1, "dup", None, b"", "")])
    assert pool.query(f"SELECT id FROM {table} ORDER BY id") == [(1,)]
    assert pool.insert_many(table, COLUMNS, [(3, "c", None, b"", "")]) == 1
    with pytest.raises(TypeError, match="float"):
        pool.insert_many(table, COLUMNS, [(4, "d", None, 1.5, "")])
    assert pool.query(f"SELECT id FROM {table} ORDER BY id") == [(1,), (3,)]


def test_a_server_that_refuses_prepared_statements_gets_the_rows_as_text(pool, monkeypatch):
    """A refusal by the server (1295, as from a proxy) switches the pool to
    executemany for good; a lost connection (2013) is not a refusal: it is a
    503 and the next batch tries prepared statements again."""
    table = _table(pool)
    calls = []

    def lost(*args, **kwargs):
        calls.append("lost")
        raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")

    monkeypatch.setattr(mysql_prepared, "insert_rows", lost)
    with pytest.raises(DependencyUnavailable):
        pool.insert_many(table, COLUMNS, [(1, "a", None, b"", "")])
    assert not pool._prepare_refused

    def refused(*args, **kwargs):
        calls.append("refused")
        raise pymysql.err.OperationalError(1295, "This command is not supported in the prepared statement protocol yet")

    monkeypatch.setattr(mysql_prepared, "insert_rows", refused)
    assert pool.insert_many(table, COLUMNS, [(1, "图片", None, b"\x00\xff", "t")], ignore=True) == 1
    assert pool._prepare_refused
    assert pool.insert_many(table, COLUMNS, [(2, "b", None, b"", "")], ignore=True) == 1
    assert calls == ["lost", "refused"]  # not asked again after the refusal
    assert [tuple(r) for r in pool.query(f"SELECT id, label, data FROM {table} ORDER BY id")] == \
        [(1, "图片", b"\x00\xff"), (2, "b", b"")]


def test_prepared_statements_are_prepared_once_per_connection(pool):
    table = _table(pool)
    status = "SHOW SESSION STATUS LIKE 'Com_stmt_prepare'"
    pool.insert_many(table, COLUMNS, [(i, "a", None, b"", "") for i in range(16)])
    before = int(pool.query(status)[0][1])
    assert before >= 1
    pool.insert_many(table, COLUMNS, [(100 + i, "a", None, b"", "") for i in range(16)])
    assert int(pool.query(status)[0][1]) == before
