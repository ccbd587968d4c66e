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
def pool(mariadb):
    p = SqlPool(mariadb.create_database(), None, 5, 1)  # one connection: every call reuses it
    yield p
    p.close()


def _table(pool: SqlPool) -> str:
    name = f"`{unique('prep')}`"
    pool.execute(
        f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, label VARCHAR(64) NOT NULL, "
        "note VARCHAR(64) NULL, data LONGBLOB NOT NULL, text_blob LONGTEXT NOT NULL) "
        "DEFAULT CHARSET=utf8mb4"
    )
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
        ((1 << 63) - 1, 'it\'s \\ "q" \t\n\x00 end', "\U0001f600 emoji", b"\x00'\\", "a" * 1_000_000),
    ]
    executions = "SHOW SESSION STATUS LIKE 'Com_stmt_execute'"
    before = int(pool.query(executions)[0][1])
    assert pool.insert_many(table, COLUMNS, rows) == 3
    assert int(pool.query(executions)[0][1]) == before + 2  # 3 rows: a 2-row and a 1-row statement
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
    # 1,000 bytes + 5 x 11 of parameter overhead a row: 4 rows fit, as one
    # statement of 4 rows (the shapes are 16, 8, 4, 2, 1)
    assert executed == [4] * 10

    executed.clear()
    again = rows[35:] + [(40 + i, f"r{40 + i}", None, b"y", "t") for i in range(20)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mysql_prepared, "_run", counting)
        assert pool.insert_many(table, COLUMNS, again, ignore=True) == 20  # 5 already there
    assert executed == [16, 8, 1]  # at most 16 rows an execution; 9 as 8 + 1
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
        raise pymysql.err.OperationalError(
            1295, "This command is not supported in the prepared statement protocol yet"
        )

    monkeypatch.setattr(mysql_prepared, "insert_rows", refused)
    assert pool.insert_many(table, COLUMNS, [(1, "图片", None, b"\x00\xff", "t")], ignore=True) == 1
    assert pool._prepare_refused
    assert pool.insert_many(table, COLUMNS, [(2, "b", None, b"", "")], ignore=True) == 1
    assert calls == ["lost", "refused"]  # not asked again after the refusal
    assert [tuple(r) for r in pool.query(f"SELECT id, label, data FROM {table} ORDER BY id")] == [
        (1, "图片", b"\x00\xff"),
        (2, "b", b""),
    ]


def test_prepared_statements_are_prepared_once_per_connection(pool):
    table = _table(pool)
    status = "SHOW SESSION STATUS LIKE 'Com_stmt_prepare'"
    pool.insert_many(table, COLUMNS, [(i, "a", None, b"", "") for i in range(16)])
    before = int(pool.query(status)[0][1])
    assert before >= 1
    pool.insert_many(table, COLUMNS, [(100 + i, "a", None, b"", "") for i in range(16)])
    assert int(pool.query(status)[0][1]) == before


def test_cached_statements_follow_a_table_that_is_dropped_recreated_or_altered(pool):
    """Delete a collection and load it again: the connection's cached
    statements name a table that was dropped and made anew (or altered); the
    server re-prepares them and the rows land in the new table."""
    table = _table(pool)
    assert pool.insert_many(table, COLUMNS, [(1, "a", None, b"\x01", "t")]) == 1
    pool.execute(f"DROP TABLE {table}")
    pool.execute(
        f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, label VARCHAR(64) NOT NULL, "
        "note VARCHAR(64) NULL, data LONGTEXT NOT NULL, text_blob LONGBLOB NOT NULL) "
        "DEFAULT CHARSET=utf8mb4"
    )
    assert pool.insert_many(table, COLUMNS, [(1, "新", None, "QUJD", "t")]) == 1
    pool.execute(f"ALTER TABLE {table} ADD COLUMN extra INT NOT NULL DEFAULT 7")
    assert pool.insert_many(table, COLUMNS, [(2, "b", "n", "x", "y")]) == 1
    assert [
        tuple(r) for r in pool.query(f"SELECT id, label, data, text_blob, extra FROM {table} ORDER BY id")
    ] == [(1, "新", "QUJD", b"t", 7), (2, "b", "x", b"y", 7)]


def test_a_connection_keeps_few_statements_however_many_tables(pool):
    """Statement shapes are 16/8/4/2/1 rows a table and a connection keeps
    at most 20, closing the least recently used: the server-wide
    max_prepared_stmt_count is shared with every client."""
    tables = [_table(pool) for _ in range(8)]
    for table in tables:
        assert (
            pool.insert_many(table, COLUMNS, [(i, "a", None, b"", "") for i in range(31)]) == 31
        )  # 16+8+4+2+1
    with pool.connection() as conn:
        cache = getattr(conn, mysql_prepared._CACHE_ATTR)
        assert len(cache) == mysql_prepared._CACHE_SIZE
    closed = int(pool.query("SHOW SESSION STATUS LIKE 'Com_stmt_close'")[0][1])
    assert closed == 8 * 5 - mysql_prepared._CACHE_SIZE


def test_a_null_past_the_first_byte_of_the_null_bitmap(pool):
    """The NULL bitmap spans bytes from the 9th parameter on; numpy integers
    are sent as integers, as the text protocol did; an int beyond int64 is
    refused before anything is sent."""
    import numpy as np

    name = f"`{unique('wide')}`"
    pool.execute(f"CREATE TABLE {name} (" + ", ".join(f"c{i} BIGINT NULL" for i in range(10)) + ")")
    columns = [f"c{i}" for i in range(10)]
    row = (np.int64(1), 2, 3, 4, 5, 6, 7, 8, None, np.int32(10))
    assert pool.insert_many(name, columns, [row, tuple(range(10))]) == 2
    assert pool.query(f"SELECT * FROM {name} ORDER BY c0") == [
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
        (1, 2, 3, 4, 5, 6, 7, 8, None, 10),
    ]
    with pytest.raises(ValueError, match="64-bit"):
        pool.insert_many(name, columns, [(1 << 63,) + (0,) * 9])


@pytest.mark.parametrize(
    "n, encoded",
    [
        (250, b"\xfa"),
        (251, b"\xfc\xfb\x00"),
        (65535, b"\xfc\xff\xff"),
        (65536, b"\xfd\x00\x00\x01"),
        ((1 << 24) - 1, b"\xfd\xff\xff\xff"),
        (1 << 24, b"\xfe" + (1 << 24).to_bytes(8, "little")),
    ],
)
def test_length_prefixes_at_their_edges(n, encoded):
    assert mysql_prepared._lenenc(n) == encoded


def test_statements_are_prepared_again_after_a_server_restart(mariadb):
    """A restart kills the connection and the statements prepared on it; the
    pool's pre-ping replaces the connection and the next batch prepares anew."""
    db = mariadb
    pool = SqlPool(db.create_database(), None, 5, 1)
    try:
        table = _table(pool)
        assert pool.insert_many(table, COLUMNS, [(1, "a", None, b"", "")]) == 1
        db.restart()
        assert pool.insert_many(table, COLUMNS, [(2, "b", None, b"\x00", "")]) == 1
        assert pool.query(f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]
    finally:
        pool.close()


def test_a_row_over_16_mb_travels_in_several_packets(mariadb):
    """One COM_STMT_EXECUTE over 16 MB is split into protocol packets (a large
    photo on a server with a bigger max_allowed_packet); it arrives whole."""
    db = mariadb
    admin = SqlPool(db.create_database(), None, 5, 1)
    ((old,),) = admin.query("SELECT @@GLOBAL.max_allowed_packet")
    admin.execute("SET GLOBAL max_allowed_packet = ?", (64 << 20,))
    pool = SqlPool(db.create_database(), None, 30, 1)  # a new connection sees the new limit
    try:
        table = _table(pool)
        big = bytes(range(256)) * ((17 << 20) // 256 + 3)
        assert (
            pool.insert_many(
                table,
                COLUMNS,
                [(1, "big", None, big, "t"), (2, "small", None, b"s", "t")],
                max_group_bytes=48 << 20,
            )
            == 2
        )
        assert pool.query(f"SELECT LENGTH(data), data = ? FROM {table} WHERE id = 1", (big,)) == [
            (len(big), 1)
        ]
    finally:
        pool.close()
        admin.execute("SET GLOBAL max_allowed_packet = ?", (int(old),))
        admin.close()
