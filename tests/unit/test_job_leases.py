"""Job leases on SQLite: claims, renewals, fencing, cancel flags and takeovers.

Several `SqlPool`s on one file stand for several replicas (each has its own connections, as a
process would); the race test uses real processes on one file. The same store runs on MariaDB
in tests/stores/test_job_store.py and with real uvicorn replicas in tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from operations import jobs as jobs_module
from operations.errors import Conflict, NotFound
from operations.jobs import MAX_TAKEOVERS, JobRunner
from operations.stores.job_store import JobStore
from operations.stores.sql_pool import SqlPool

LAPSED = -1.0  # a lease that ran out a second ago


def _store(path: Path) -> JobStore:
    store = JobStore(SqlPool("", path, timeout_s=10, size=2))
    store.ensure_tables()
    return store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


def test_a_lapsed_job_is_taken_over_by_exactly_one_replica_and_the_old_holder_is_fenced(db):
    a, b, c = _store(db), _store(db), _store(db)
    job = a.create("load", "col", {"n": 1}, owner="A", lease_s=30)
    assert a.start(job.id, job.lease_token)
    # A's lease is valid: nobody may take the job.
    assert b.take_over(job.id, "B", 30, MAX_TAKEOVERS) is None
    assert b.lapsed(10) == []
    # A's lease lapses (A stalled or died).
    a.renew(job.id, job.lease_token, LAPSED)
    assert b.lapsed(10) == [job.id]
    token_b = b.take_over(job.id, "B", 30, MAX_TAKEOVERS)
    assert token_b is not None
    assert c.take_over(job.id, "C", 30, MAX_TAKEOVERS) is None  # B's lease is fresh now
    row = c.get(job.id)
    assert (row.owner, row.state, row.takeovers) == ("B", "running", 1)
    # A wakes up: none of its writes lands any more.
    a.renew(job.id, job.lease_token, 30)
    a.progress(job.id, 999, 9, 1000, [("x", "late failure")], token=job.lease_token)
    assert not a.finish(job.id, "succeeded", "A's end", job.lease_token)
    assert not a.start(job.id, job.lease_token)
    assert a.holders([job.id]) == {job.id: (token_b, False)}
    row = c.get(job.id)
    assert (row.state, row.processed, row.failures, row.owner) == ("running", 0, [], "B")
    # B's writes land.
    b.progress(job.id, 5, 1, 10, [("y", "bad record")], token=token_b)
    assert b.finish(job.id, "succeeded", "done", token_b)
    row = c.get(job.id)
    assert (row.state, row.processed, row.failed, row.message) == ("succeeded", 5, 1, "done")
    assert row.failures == [{"item": "y", "reason": "bad record"}]
    assert (row.lease_token, row.lease_until) == (None, None)
    assert c.lapsed(10) == []


def test_renewing_keeps_the_lease(db):
    a, b = _store(db), _store(db)
    job = a.create("load", "col", {}, owner="A", lease_s=0.3)
    a.start(job.id, job.lease_token)
    for _ in range(4):  # 0.6 s in all, twice the lease, renewed every 0.15 s
        time.sleep(0.15)
        a.renew(job.id, job.lease_token, 0.3)
        assert b.take_over(job.id, "B", 30, MAX_TAKEOVERS) is None
    time.sleep(0.4)  # no renewal for longer than the lease
    assert b.take_over(job.id, "B", 30, MAX_TAKEOVERS) is not None


def test_leases_use_the_database_clock_not_the_replicas(db, monkeypatch):
    a, b = _store(db), _store(db)
    job = a.create("load", "col", {}, owner="A", lease_s=30)
    a.start(job.id, job.lease_token)
    # A replica whose own clock runs an hour ahead still sees A's lease as valid.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    assert b.take_over(job.id, "B", 30, MAX_TAKEOVERS) is None
    assert b.lapsed(10) == []
    row = b.get(job.id)
    assert abs(row.lease_until - b.db_now() - 30) < 5


def _race(path: str, ids: list[str], name: str, out) -> None:
    store = JobStore(SqlPool("", Path(path), timeout_s=30, size=1))
    won = [job_id for job_id in ids if store.take_over(job_id, name, 60, MAX_TAKEOVERS)]
    out.put((name, won))


def test_processes_racing_for_lapsed_jobs_on_one_sqlite_file_each_win_distinct_jobs(db):
    store = _store(db)
    ids = []
    for i in range(40):
        job = store.create("load", "col", {"i": i}, owner="dead", lease_s=LAPSED)
        store.start(job.id, job.lease_token)
        ids.append(job.id)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(db), ids, f"r{k}", out)) for k in range(4)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    won = [job_id for name in results for job_id in results[name]]
    assert sorted(won) == sorted(ids)  # every job claimed, none twice
    for name, mine in results.items():
        assert {store.get(job_id).owner for job_id in mine} <= {name}


def test_cancel_flag_from_any_replica(db):
    a, b = _store(db), _store(db)
    job = a.create("load", "col", {}, owner="A", lease_s=30)
    a.start(job.id, job.lease_token)
    b.request_cancel(job.id)
    b.request_cancel(job.id)  # asking twice is fine
    assert a.holders([job.id]) == {job.id: (job.lease_token, True)}
    a.finish(job.id, "cancelled", "", job.lease_token)
    with pytest.raises(Conflict, match="cancelled"):
        b.request_cancel(job.id)
    with pytest.raises(NotFound):
        b.request_cancel("nope")


def test_lapsed_jobs_that_were_cancelled_or_keep_killing_replicas_are_settled(db):
    s = _store(db)
    cancelled = s.create("load", "col", {}, owner="A", lease_s=LAPSED)
    s.start(cancelled.id, cancelled.lease_token)
    s.request_cancel(cancelled.id)
    poison = s.create("load", "col", {}, owner="A", lease_s=LAPSED)
    s.start(poison.id, poison.lease_token)
    for k in range(MAX_TAKEOVERS):
        token = s.take_over(poison.id, f"R{k}", LAPSED, MAX_TAKEOVERS)
        assert token is not None
        s.start(poison.id, token)
    assert s.take_over(poison.id, "R", 30, MAX_TAKEOVERS) is None  # taken over too often
    assert s.lapsed(10) == [poison.id]
    assert sorted(s.settle_lapsed(MAX_TAKEOVERS)) == sorted([cancelled.id, poison.id])
    assert s.get(cancelled.id).state == "cancelled"
    failed = s.get(poison.id)
    assert failed.state == "failed" and "resume it by hand" in failed.message
    # Resumed by hand: the count starts over.
    token = s.claim(poison.id, "R", 30)
    assert s.start(poison.id, token)
    row = s.get(poison.id)
    assert (row.state, row.takeovers, row.owner) == ("running", 0, "R")
    with pytest.raises(Conflict, match="running"):
        s.claim(poison.id, "other", 30)


def test_a_handed_back_job_is_taken_at_once_and_not_counted_as_a_takeover(db):
    a, b = _store(db), _store(db)
    job = a.create("load", "col", {}, owner="A", lease_s=30)
    a.start(job.id, job.lease_token)
    assert a.release(job.id, job.lease_token, "A stopped")
    assert b.lapsed(10) == [job.id]
    token = b.take_over(job.id, "B", 30, MAX_TAKEOVERS)
    assert token is not None
    row = b.get(job.id)
    assert (row.owner, row.takeovers, row.state) == ("B", 0, "queued")


def test_job_tables_from_before_leases_get_the_columns_and_their_running_jobs_are_taken_over(db):
    pool = SqlPool("", db, timeout_s=10, size=1)
    pool.execute(
        """CREATE TABLE jobs (id VARCHAR(32) NOT NULL PRIMARY KEY, kind VARCHAR(32) NOT NULL,
        collection VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL, params TEXT NOT NULL,
        processed BIGINT NOT NULL DEFAULT 0, failed BIGINT NOT NULL DEFAULT 0, total BIGINT NULL,
        created_at DOUBLE NOT NULL, started_at DOUBLE NULL, updated_at DOUBLE NULL,
        finished_at DOUBLE NULL, message TEXT NOT NULL)"""
    )
    pool.execute(
        "INSERT INTO jobs (id, kind, collection, state, params, created_at, message) "
        "VALUES ('old', 'load', 'col', 'running', '{}', 1.0, '')"
    )
    s = _store(db)
    _store(db)  # a second replica starting: nothing to add, no error
    row = s.get("old")
    assert (row.owner, row.lease_until, row.cancel_requested, row.takeovers) == (None, None, False, 0)
    assert s.lapsed(10) == ["old"]
    assert s.take_over("old", "B", 30, MAX_TAKEOVERS) is not None


# -- the runner: heartbeat, cancel, takeover, hand-back (threads in one process) ----------------

STEPS = 20


def _stepper(svc, job, progress) -> str:
    """A job of STEPS steps of 30 ms; `svc.gates[name]` (when set) holds it after 3 steps until
    set, as a stalled replica."""
    steps = job.params.get("steps", STEPS)
    progress.set_total(steps)
    for _ in range(steps):
        if progress.cancelled():
            return "stopped"
        gate = svc.gates.get(svc.name)
        if gate is not None and progress.processed >= 3:
            progress.flush()  # the counts so far are in SQL before it stalls
            gate.wait()
        time.sleep(0.03)
        progress.advance(1)
    progress.flush()
    return f"{steps} steps by {svc.name}"


@pytest.fixture
def replicas(db, monkeypatch):
    monkeypatch.setitem(jobs_module.RUNNERS, "steps", _stepper)
    gates: dict[str, threading.Event] = {}
    made = []

    def make(name: str, lease_s: float = 1.0) -> JobRunner:
        svc = SimpleNamespace(jobs=_store(db), name=name, gates=gates, settings=None)
        runner = JobRunner(svc, lease_s=lease_s, owner=name)  # type: ignore[arg-type]
        made.append(runner)
        return runner

    yield make, gates
    for gate in gates.values():
        gate.set()
    for runner in made:
        runner.shutdown()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_stalled_replicas_job_is_taken_over_and_its_late_end_is_not_recorded(replicas):
    make, gates = replicas
    a, b = make("A", lease_s=0.6), make("B", lease_s=0.6)
    gates["A"] = threading.Event()  # A's job stalls after 3 steps
    job = a.submit("steps", "col", {})
    _wait(lambda: a.jobs.get(job.id).processed >= 3, 10, "A to make progress")
    # A stalls: its watcher stops too (as a paused or partitioned process).
    a._watch_stop.set()
    row = _wait(
        lambda: (r := b.jobs.get(job.id)).owner == "B" and r.state == "succeeded" and r, 15, "B to finish it"
    )
    assert (row.processed, row.takeovers, row.message) == (STEPS, 1, f"{STEPS} steps by B")
    gates["A"].set()  # A wakes up and runs its copy to the end: nothing of it is recorded
    _wait(lambda: not a.local_jobs(), 10, "A to stop its copy")
    row = b.jobs.get(job.id)
    assert (row.state, row.owner, row.message) == ("succeeded", "B", f"{STEPS} steps by B")


def test_cancel_on_one_replica_stops_the_job_on_another(replicas):
    make, _ = replicas
    a, b = make("A"), make("B")
    job = a.submit("steps", "col", {"steps": 1000})
    _wait(lambda: a.jobs.get(job.id).processed >= 2, 10, "A to make progress")
    asked = time.monotonic()
    b.cancel(job.id)
    row = _wait(lambda: (r := b.jobs.get(job.id)).state != "running" and r, 10, "the job to stop")
    assert row.state == "cancelled" and row.processed < 1000
    assert time.monotonic() - asked < 3  # a heartbeat (<= 1 s) plus one step
    with pytest.raises(Conflict):
        b.cancel(job.id)


def test_a_replica_stopping_hands_its_job_to_another_without_counting_a_takeover(replicas):
    make, _ = replicas
    a, b = make("A", lease_s=30), make("B", lease_s=0.6)  # B looks every 0.3 s
    job = a.submit("steps", "col", {"steps": 1000})  # far longer than the test
    _wait(lambda: a.jobs.get(job.id).processed >= 2, 10, "A to make progress")
    a.shutdown()
    row = _wait(lambda: (r := b.jobs.get(job.id)).owner == "B" and r, 15, "B to take it")
    assert (row.state, row.takeovers) == ("running", 0)  # handed over, not taken from a dead A
    _wait(lambda: b.jobs.get(job.id).processed >= 2, 10, "B to make progress")
    b.cancel(job.id)
    _wait(lambda: b.jobs.get(job.id).state == "cancelled", 10, "the job to stop")


def test_a_drop_sees_jobs_running_on_other_replicas(replicas):
    make, _ = replicas
    a, b = make("A"), make("B")
    job = a.submit("steps", "col", {"steps": 1000})
    assert b.running_on("col") == [job.id]
    assert b.running_on("other") == []
    a.cancel(job.id)
    _wait(lambda: b.running_on("col") == [], 10, "the job to end")


def test_a_bulk_add_taken_over_where_its_folder_is_missing_fails_saying_so(tmp_path):
    from operations.jobs import _run_add_folder
    from operations.progress import Counter
    from operations.stores.job_store import Job

    job = Job("j", "add", "col", "running", {"folder": str(tmp_path / ".spool" / "j"), "spooled": True})
    with pytest.raises(NotFound, match="shared storage"):
        _run_add_folder(None, job, Counter())  # type: ignore[arg-type]
