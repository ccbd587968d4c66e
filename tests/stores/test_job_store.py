"""The job store's leases on each SQL backend: SQLite (one file, several processes) and MariaDB.

The lease rules themselves are unit-tested on SQLite in tests/unit/test_job_leases.py; here
the same statements run on MariaDB too: the database clock expression, conditional claims
raced by processes, MySQL's rowcount (rows changed, not matched) and the schema upgrade.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

from operations.errors import Conflict
from operations.jobs import MAX_TAKEOVERS
from operations.stores.job_store import JobStore
from operations.stores.sql_pool import SqlPool

LAPSED = -1.0


@pytest.fixture(params=["sqlite", "mariadb"])
def url_and_path(request, tmp_path):
    if request.param == "mariadb":
        db = request.getfixturevalue("mariadb")
        return db.create_database(), None
    return "", tmp_path / "jobs.sqlite3"


def _store(url: str, path, size: int = 2) -> JobStore:
    store = JobStore(SqlPool(url, path, timeout_s=20, size=size))
    store.ensure_tables()
    return store


def test_the_database_clock_is_epoch_seconds(url_and_path):
    s = _store(*url_and_path)
    assert abs(s.db_now() - time.time()) < 5  # the test server runs on this machine


def _race(url: str, path, ids: list[str], name: str, out) -> None:
    store = JobStore(SqlPool(url, path, timeout_s=30, size=1))
    out.put((name, [job_id for job_id in ids if store.take_over(job_id, name, 60, MAX_TAKEOVERS)]))


def test_processes_racing_for_lapsed_jobs_each_win_distinct_ones(url_and_path):
    url, path = url_and_path
    s = _store(url, path)
    ids = []
    for i in range(40):
        job = s.create("load", "col", {"i": i}, owner="dead", lease_s=LAPSED)
        assert s.start(job.id, job.lease_token)
        ids.append(job.id)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(url, path, ids, f"r{k}", out)) for k in range(4)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    won = [job_id for mine in results.values() for job_id in mine]
    assert sorted(won) == sorted(ids)
    for name, mine in results.items():
        assert all(s.get(job_id).owner == name for job_id in mine)
        assert all(s.get(job_id).takeovers == 1 for job_id in mine)


def test_fencing_renewal_cancel_and_release(url_and_path):
    url, path = url_and_path
    a, b = _store(url, path), _store(url, path)
    job = a.create("load", "col", {}, owner="A", lease_s=30)
    assert a.start(job.id, job.lease_token)
    assert a.start(job.id, job.lease_token)  # again: MySQL reports 0 rows changed, still held
    assert b.take_over(job.id, "B", 30, MAX_TAKEOVERS) is None
    a.renew(job.id, job.lease_token, LAPSED)
    token = b.take_over(job.id, "B", 30, MAX_TAKEOVERS)
    assert token is not None
    a.progress(job.id, 7, 0, 10, [("x", "late")], token=job.lease_token)
    assert not a.finish(job.id, "succeeded", "", job.lease_token)
    assert not a.start(job.id, job.lease_token)
    row = b.get(job.id)
    assert (row.owner, row.processed, row.failures, row.state) == ("B", 0, [], "running")
    b.request_cancel(job.id)
    b.request_cancel(job.id)  # MySQL: 0 rows changed the second time, still no error
    assert a.holders([job.id]) == {job.id: (token, True)}
    assert b.release(job.id, token, "stopping")
    assert [job.id] == b.settle_lapsed(MAX_TAKEOVERS)  # cancelled while handed back
    assert b.get(job.id).state == "cancelled"
    with pytest.raises(Conflict):
        b.request_cancel(job.id)


def test_a_job_table_from_before_leases_is_upgraded_by_replicas_starting_at_once(url_and_path):
    url, path = url_and_path
    pool = SqlPool(url, path, timeout_s=20, size=1)
    text = "LONGTEXT" if pool.dialect == "mysql" else "TEXT"
    pool.execute(
        f"""CREATE TABLE jobs (id VARCHAR(32) NOT NULL PRIMARY KEY, kind VARCHAR(32) NOT NULL,
        collection VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL, params {text} NOT NULL,
        processed BIGINT NOT NULL DEFAULT 0, failed BIGINT NOT NULL DEFAULT 0, total BIGINT NULL,
        created_at DOUBLE NOT NULL, started_at DOUBLE NULL, updated_at DOUBLE NULL,
        finished_at DOUBLE NULL, message {text} NOT NULL)"""
    )
    pool.execute(
        "INSERT INTO jobs (id, kind, collection, state, params, created_at, message) "
        "VALUES ('old', 'load', 'col', 'running', '{}', 1.0, '')"
    )
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_store, args=(url, path, 1)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    s = _store(url, path)
    assert s.lapsed(10) == ["old"]
    assert s.take_over("old", "B", 30, MAX_TAKEOVERS) is not None
    assert s.get("old").owner == "B"
