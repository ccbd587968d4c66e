"""The SQL pool's deadline: a frozen MariaDB costs a call one SQL_TIMEOUT_S, not the pre-ping's
wait plus a reconnect's; the wait for a free connection shares it too (operations/deadline.py)."""

from __future__ import annotations

import logging
import time

import pytest

from operations import deadline
from operations.errors import DependencyUnavailable
from operations.stores.sql_pool import SqlPool

T_S = 2.0
MARGIN_S = 1.0


@pytest.fixture
def frozen_pool(mariadb):
    """A pool with one idle pooled connection, and its MariaDB frozen (SIGSTOP)."""
    pool = SqlPool(mariadb.create_database(), timeout_s=T_S, size=2)
    assert pool.query("SELECT 1") == [(1,)]
    mariadb.pause()
    try:
        yield pool
    finally:
        mariadb.resume()
        pool.close()


def test_frozen_mariadb_costs_one_timeout_not_preping_plus_reconnect(frozen_pool):
    # The pooled connection's pre-ping waits, then a new connection is opened: both share
    # the call's one deadline.
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable):
        frozen_pool.query("SELECT 1")
    assert time.monotonic() - started < T_S + MARGIN_S


def test_the_outage_line_names_the_statement_that_met_it(frozen_pool, caplog):
    # "Lost connection ... (timed out)" alone does not say which statement a loader or a
    # request was running; the one "down" line names it (placeholders only, never values).
    caplog.set_level(logging.WARNING, logger="operations.stores.sql_pool")
    with pytest.raises(DependencyUnavailable):
        frozen_pool.execute("UPDATE t SET indexed = 1 WHERE id IN (?, ?)", (7, 8))
    downs = [r.getMessage() for r in caplog.records if " is down" in r.getMessage()]
    assert len(downs) == 1, downs
    assert "(during UPDATE t SET indexed = 1 WHERE id IN (?, ?), after " in downs[0], downs
    assert "7" not in downs[0].split("during", 1)[1].split("after")[0]


def test_the_outage_line_names_a_transaction_by_its_statement(frozen_pool, caplog):
    caplog.set_level(logging.WARNING, logger="operations.stores.sql_pool")
    statement = "INSERT INTO t (a) VALUES (?)"
    with pytest.raises(DependencyUnavailable), frozen_pool.transaction(statement) as cur:
        cur.execute(frozen_pool.sql(statement), (7,))
    downs = [r.getMessage() for r in caplog.records if " is down" in r.getMessage()]
    assert len(downs) == 1 and f"(during {statement}, after " in downs[0], downs


def test_a_request_does_not_wait_again_for_a_store_that_failed(frozen_pool):
    # E.g. an add taking back its rows after the SQL store timed out: the request ends.
    started = time.monotonic()
    with deadline.request_scope():
        for _ in range(3):
            with pytest.raises(DependencyUnavailable):
                frozen_pool.query("SELECT 1")
    assert time.monotonic() - started < T_S + MARGIN_S


def test_busy_pool_slot_wait_shares_the_deadline(mariadb):
    pool = SqlPool(mariadb.create_database(), timeout_s=T_S, size=1)
    try:
        with pool.connection():  # the only slot, held by "another request"
            started = time.monotonic()
            with pytest.raises(DependencyUnavailable, match="busy"):
                pool.query("SELECT 1")
            assert time.monotonic() - started < T_S + MARGIN_S
        assert pool.query("SELECT 1") == [(1,)]
    finally:
        pool.close()
