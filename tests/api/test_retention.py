"""Retention as a job (POST /img/collections/{name}/retention, operations/retention.py).

Fast loop: the API on Milvus Lite + SQLite (time partitions dropped on Lite too), its 4xx.
Services: 100,000 rows on the Milvus 2.3 server + MariaDB, on a collection partitioned by
month: retention by age drops whole months (the partitions are gone) and deletes the boundary
month row by row, its replica is stopped half way and another takes the job over and finishes
it with exact counts; then retention by source. The rows left are counted in both stores and
compared with the numbers computed here from the rows written.
"""

from __future__ import annotations

import calendar
import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from operations.jobs import JobRunner
from operations.retention import KIND, RetentionRule, start_retention
from tests.stack import fill_images, make_services, make_settings, unique, wait_job

DIM = 8
SOURCES = ("shop", "news", "risk", "ugc")


def month(m: int, day: int = 1) -> int:
    return calendar.timegm((2026, m, day, 0, 0, 0))


def spread(n: int) -> list[tuple[int, str, int]]:
    """n rows (id, source, created_at) over Jan..Jun 2026, sources in turn."""
    start, end = month(1), month(7)
    step = (end - start) / n
    return [(k + 1, SOURCES[k % len(SOURCES)], int(start + k * step) + 7) for k in range(n)]


@pytest.fixture
def lite_client(tmp_path):
    settings = make_settings(tmp_path)
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:
        c.services = svc
        yield c


def test_retention_job_on_lite_drops_months_and_counts_both_stores(lite_client):
    c, svc = lite_client, lite_client.services
    name = unique("ret")
    r = c.post("/img/collections", json={"name": name, "time_partitions": "month"})
    assert r.status_code == 201, r.text
    assert r.json()["time_partitions"] == "month" and r.json()["source_partitions"] == 0
    rows = spread(2400)
    fill_images(svc, name, rows, svc.encoder.dim)
    assert svc.vectors.time_partitions(name) == [f"t2026_0{m}" for m in range(1, 7)]
    cutoff = month(3, 16)
    r = c.post(f"/img/collections/{name}/retention", json={"created_before": cutoff})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == KIND and r.json()["params"]["matched"] == sum(1 for x in rows if x[2] < cutoff)
    job = wait_job(c, r.json()["job_id"])
    gone = sum(1 for x in rows if x[2] < cutoff)
    assert job["state"] == "succeeded", job
    assert (job["processed"], job["total"]) == (gone, gone)
    assert "dropped 2 time partitions whole (t2026_01, t2026_02)" in job["message"]
    assert svc.vectors.time_partitions(name) == [f"t2026_0{m}" for m in range(3, 7)]
    counts = c.get(f"/img/collections/{name}/count").json()
    assert counts["vectors"] == counts["images"] == len(rows) - gone
    # By source, both conditions: nothing dropped whole.
    r = c.post(f"/img/collections/{name}/retention", json={"created_before": month(5), "sources": ["news"]})
    job = wait_job(c, r.json()["job_id"])
    gone2 = sum(1 for x in rows if cutoff <= x[2] < month(5) and x[1] == "news")
    assert job["state"] == "succeeded" and job["processed"] == gone2 > 0, job
    assert "partitions" not in job["message"]
    counts = c.get(f"/img/collections/{name}/count").json()
    assert counts["vectors"] == counts["images"] == len(rows) - gone - gone2


def test_retention_refuses_bad_rules_unknown_collections_and_a_second_job(lite_client):
    c, svc = lite_client, lite_client.services
    name = unique("ret")
    assert c.post("/img/collections", json={"name": name}).status_code == 201
    assert c.get(f"/img/collections/{name}").json()["time_partitions"] is None
    both = c.post(
        "/img/collections", json={"name": unique("x"), "time_partitions": "day", "source_partitions": 4}
    )
    assert both.status_code == 422 and "exclude each other" in both.text
    week = c.post("/img/collections", json={"name": unique("x"), "time_partitions": "week"})
    assert week.status_code == 422
    for body in ({}, {"sources": []}, {"created_before": 0}, {"sources": ["a;b"]}, {"when": 5}):
        r = c.post(f"/img/collections/{name}/retention", json=body)
        assert r.status_code == 422, (body, r.text)
    assert c.post("/img/collections/nope_here/retention", json={"sources": ["a"]}).status_code == 404
    assert c.post("/img/collections/bad;name/retention", json={"sources": ["a"]}).status_code == 400
    # A retention job of another replica is active on it: 409 naming the job.
    other = svc.jobs.create(KIND, name, {"sources": ["a"]}, owner="replica-b", lease_s=300)
    r = c.post(f"/img/collections/{name}/retention", json={"sources": ["a"]})
    assert r.status_code == 409 and other.id in r.text


@pytest.mark.services
def test_retention_at_100k_on_the_servers_survives_a_stopped_replica(tmp_path, milvus_server, mariadb):
    settings = make_settings(tmp_path, milvus_server.uri, mariadb.create_database(), milvus_timeout_s=30)
    svc = make_services(settings)
    name = unique("ret")
    rows = spread(100_000)
    t0 = time.monotonic()
    from operations.domain import IndexSpec

    svc.ensure_collection(name, index=IndexSpec(time_partitions="month"))
    fill_images(svc, name, rows, svc.encoder.dim)
    built_s = time.monotonic() - t0
    assert svc.vectors.time_partitions(name) == [f"t2026_0{m}" for m in range(1, 7)]
    assert svc.vectors.count(name) == svc.images.count(name) == 100_000

    # Replica 1 runs retention by age; it is stopped in the boundary month (after 3 of its
    # row-by-row vector deletes), and replica 2 takes the job over.
    cutoff = month(3, 31)
    gone = sum(1 for x in rows if x[2] < cutoff)
    reached, go_on = threading.Event(), threading.Event()
    deletes = {"n": 0}
    real_delete = svc.vectors.delete

    def delete(collection, ids, *, visible=True):
        real_delete(collection, ids, visible=visible)
        deletes["n"] += 1
        if deletes["n"] == 3:
            reached.set()
            go_on.wait(30)

    svc.vectors.delete = delete  # type: ignore[method-assign]  # stops the job at a known point
    runner1 = JobRunner(svc, owner="replica-1", watch=False)
    t1 = time.monotonic()
    job = start_retention(svc, runner1, name, RetentionRule(cutoff))
    assert reached.wait(60), "the job never reached the boundary month"
    with pytest.raises(Exception, match="retention job runs"):
        start_retention(svc, runner1, name, RetentionRule(cutoff))
    stopper = threading.Thread(target=runner1.shutdown)
    stopper.start()
    time.sleep(0.3)  # the shutdown has asked the job to stop
    go_on.set()
    stopper.join(60)
    svc.vectors.delete = real_delete  # type: ignore[method-assign]
    handed = svc.jobs.get(job.id)
    assert handed.state == "queued" and "stopped before the job finished" in handed.message
    assert 0 < handed.processed < gone
    # The months before March are dropped whole; the rest of March is still to do.
    assert svc.vectors.time_partitions(name)[0] == "t2026_03"
    left_now = svc.images.count(name)
    assert svc.vectors.count(name) == left_now > 100_000 - gone

    runner2 = JobRunner(svc, owner="replica-2", watch=False)
    assert runner2.take_over_lapsed() == [job.id]
    done = _wait(svc, job.id)
    age_s = time.monotonic() - t1
    assert done.state == "succeeded", done.message
    assert (done.processed, done.total) == (gone, gone)
    # The run that took over found January and February dropped already: it said nothing of them.
    assert f"deleted {gone} images ({100_000 - left_now} of them by an interrupted run)" in done.message
    assert svc.vectors.time_partitions(name) == [f"t2026_0{m}" for m in range(3, 7)]
    expected = 100_000 - gone
    assert svc.vectors.count(name) == svc.images.count(name) == expected
    client = svc.vectors._connect()  # the test reads Milvus directly, independent of the store
    for flt, want in (
        (f"created_at < {cutoff}", 0),
        (f"created_at >= {cutoff}", expected),
        ('source == "news"', sum(1 for x in rows if x[2] >= cutoff and x[1] == "news")),
    ):
        got = client.query(name, filter=flt, output_fields=["count(*)"], consistency_level="Strong")
        assert got[0]["count(*)"] == want, flt

    # Retention by source on what is left: row by row, no partition dropped.
    t2 = time.monotonic()
    job2 = start_retention(svc, runner2, name, RetentionRule(sources=("news", "ugc")))
    done2 = _wait(svc, job2.id)
    source_s = time.monotonic() - t2
    gone2 = sum(1 for x in rows if x[2] >= cutoff and x[1] in ("news", "ugc"))
    assert done2.state == "succeeded" and (done2.processed, done2.total) == (gone2, gone2), done2.message
    expected -= gone2
    assert svc.vectors.count(name) == svc.images.count(name) == expected
    for source in SOURCES:
        want = sum(1 for x in rows if x[2] >= cutoff and x[1] == source and source not in ("news", "ugc"))
        got = client.query(
            name, filter=f'source == "{source}"', output_fields=["count(*)"], consistency_level="Strong"
        )
        assert got[0]["count(*)"] == want, source
    assert len(svc.vectors.time_partitions(name)) == 4
    runner2.shutdown()
    print(f"\n100k retention: build {built_s:.1f} s, by age {age_s:.1f} s, by source {source_s:.1f} s")
    svc.vectors.drop_collection(name)
    svc.images.drop_collection(name)
    svc.vectors.close()
    svc.images.close()


def _wait(svc, job_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = svc.jobs.get(job_id)
        if job.state not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {svc.jobs.get(job_id)}")


def test_the_server_default_partitioning_gives_way_to_the_request(tmp_path):
    settings = make_settings(tmp_path, time_partitions="month")
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:

        def made(**body) -> tuple:
            r = c.post("/img/collections", json={"name": unique("p"), **body})
            assert r.status_code == 201, r.text
            return r.json()["time_partitions"], r.json()["source_partitions"]

        assert made() == ("month", 0)
        assert made(source_partitions=4) == (None, 4)
        assert made(time_partitions="none") == (None, 0)
        assert made(time_partitions="year", source_partitions=0) == ("year", 0)
    settings = make_settings(tmp_path / "b", source_partitions=4)
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:
        r = c.post("/img/collections", json={"name": unique("p"), "time_partitions": "day"})
        assert (r.json()["time_partitions"], r.json()["source_partitions"]) == ("day", 0)
        r = c.post("/img/collections", json={"name": unique("p")})
        assert (r.json()["time_partitions"], r.json()["source_partitions"]) == (None, 4)
