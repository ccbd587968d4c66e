"""Two real uvicorn replicas on one Milvus 2.3 server and one MariaDB behave as one service.

- a load job's replica is killed (`kill -9`) half way: the other replica takes the job over by
  itself once the lease lapses and finishes it, with every image once in both stores; the same
  for a retention job (exact counts, both stores alike);
- a job running on one replica is cancelled through the other;
- the same image uploaded to both replicas at the same moment is stored once;
- an add or delete answered by one replica is seen by the very next search on the other;
- a rebuild switched on one replica moves the other's searches within ALIAS_REFRESH_S and its
  writes at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from operations.domain import IndexSpec, SearchFilter
from scripts.dev_services import free_port
from tests.stack import (
    REPO,
    TINY_ARCH,
    fill_images,
    jpeg,
    make_services,
    make_settings,
    tiny_encoder,
    unique,
    write_dataset,
)

N = 3000
N_LONG = 24_000
N_RETENTION = 40_000
LEASE_S = 2.0
ALIAS_REFRESH_S = 1.0


class Replica:
    """One `python -m app.main` process; its log goes to a file (a pipe could fill and block it)."""

    def __init__(self, name: str, env: dict, log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.main", "--port", str(self.port)],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_until(up, 180, f"replica {self.name} to start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, as a rolling restart does (uvicorn re-raises it after its shutdown)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/img/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _job_when(replica: Replica, job_id: str, predicate, timeout: float, what: str) -> dict:
    """The job as `replica` reports it, once `predicate(job)` holds."""

    def check():
        job = replica.job(job_id)
        return job if predicate(job) else None

    return _wait_until(check, timeout, what)


def _ended(job: dict) -> bool:
    return job["state"] not in ("queued", "running")


def _owned_by(job: dict, replica: Replica) -> bool:
    return (job.get("owner") or "").split(":")[1:2] == [str(replica.pid)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, milvus_server, mariadb):
    tmp = tmp_path_factory.mktemp("replicas")
    settings = make_settings(tmp, milvus_server.uri, mariadb.create_database())
    write_dataset(settings.data_root / "big", "train", N, tiny_encoder().dim, seed=5)
    env = dict(os.environ)
    env.update(
        {
            "MILVUS_URI": settings.milvus_uri,
            "MYSQL_URL": settings.mysql_url,
            "MODEL_NAME": "tiny",
            "MODEL_ARCH": str(TINY_ARCH),
            "MODEL_RANDOM_INIT": "true",
            "DEFAULT_COLLECTION": "replicas",
            "DATA_ROOT": str(settings.data_root),
            "LOAD_BATCH_SIZE": "50",
            "JOB_LEASE_S": str(LEASE_S),
            "MILVUS_CONSISTENCY": "Adaptive",  # the default, whatever this shell says
            # A second small model (another seed) for the rebuild test; loaded on first use.
            "EXTRA_MODELS": json.dumps({"tiny-b": {"arch": str(TINY_ARCH), "random_init": True, "seed": 1}}),
            "ALIAS_REFRESH_S": str(ALIAS_REFRESH_S),
            "REBUILD_SWITCH_GRACE_S": "0.5",
        }
    )
    replicas = [Replica("a", env, tmp), Replica("b", env, tmp)]
    for r in replicas:
        r.start()
    try:
        yield settings, replicas
    finally:
        for r in replicas:
            r.stop()
            r.http.close()


@pytest.fixture(autouse=True)
def _both_up(stack):
    """A test that stopped or killed a replica (or failed before it was back) leaves both up."""
    yield
    for replica in stack[1]:
        if replica.proc is None or replica.proc.poll() is not None:
            replica.start()


def _load(replica: Replica, collection: str, dataset: str = "big") -> str:
    r = replica.http.post("/img/load", json={"dataset": dataset, "split": "train", "collection": collection})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def _stored(settings, collection: str) -> tuple[int, int]:
    """(SQL rows, Milvus vectors) read by a third process-independent client, Strong counts."""
    svc = make_services(settings)
    try:
        assert svc.images.unindexed_ids(collection, 10) == []
        return svc.images.count(collection), svc.vectors.count(collection)
    finally:
        svc.vectors.close()
        svc.images.close()


def test_a_replica_killed_mid_load_has_its_job_finished_by_the_other(stack):
    settings, (a, b) = stack
    collection = unique("takeover")
    job_id = _load(a, collection)
    _wait_until(lambda: a.job(job_id)["processed"] >= 300, 120, "the load to make progress on a")
    before = a.job(job_id)
    assert _owned_by(before, a), before
    a.kill()
    killed_at = time.monotonic()
    assert before["processed"] < N, "the kill came after the load ended"
    # Nobody asks for a resume: b sees the lease lapse and takes the job over by itself.
    taken = _job_when(b, job_id, lambda j: _owned_by(j, b), 60, "b to take the job over")
    took_s = time.monotonic() - killed_at
    done = _job_when(b, job_id, _ended, 300, "the job to end")
    assert done["state"] == "succeeded", (done, b.tail())
    assert (done["processed"], done["failed"], done["total"]) == (N, 0, N), done
    assert "already there" in done["message"] and not done["message"].startswith("loaded 0,"), done
    counts = b.http.get(f"/img/collections/{collection}/count").json()
    assert counts["images"] == counts["vectors"] == N, counts
    assert _stored(settings, collection) == (N, N)
    # The lease was 2 s; b polls every second. Generous: the machine may be busy.
    assert took_s < LEASE_S + 30, (took_s, taken)
    print(f"takeover {took_s:.1f} s after kill -9 (lease {LEASE_S} s)")


def test_a_replica_killed_mid_retention_has_its_job_finished_by_the_other(stack):
    """kill -9 while retention deletes row by row (a vector may be gone and its row not yet):
    the other replica takes the job over and ends with exact counts in both stores."""
    settings, (a, b) = stack
    collection = unique("retention")
    first = 1_767_225_600  # 2026-01-01
    rows = [(k + 1, ("shop", "news", "risk", "ugc")[k % 4], first + k * 300) for k in range(N_RETENTION)]
    doomed = SearchFilter(sources=("news", "risk", "ugc"))
    matched = sum(1 for r in rows if r[1] != "shop")
    svc = make_services(settings)
    try:
        svc.ensure_collection(collection, index=IndexSpec(time_partitions="month"))
        fill_images(svc, collection, rows, svc.encoder.dim)
        r = a.http.post(f"/img/collections/{collection}/retention", json={"sources": ["news", "risk", "ugc"]})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        # Read in SQL directly: the job row's counts are written twice a second only.
        _wait_until(
            lambda: svc.images.count_matching(collection, doomed) <= matched - 3000,
            120,
            "retention to make progress on a",
        )
        a.kill()
        assert svc.images.count_matching(collection, doomed) > 0, "the kill came after the job ended"
        _job_when(b, job_id, lambda j: _owned_by(j, b), 60, "b to take the job over")
        done = _job_when(b, job_id, _ended, 300, "the job to end")
        assert done["state"] == "succeeded", (done, b.tail())
        assert (done["processed"], done["total"]) == (matched, matched), done
        assert "of them by an interrupted run" in done["message"], done
        assert svc.images.count_matching(collection, doomed) == 0
    finally:
        svc.vectors.close()
        svc.images.close()
    left = N_RETENTION - matched
    assert _stored(settings, collection) == (left, left)


def test_a_replica_stopped_cleanly_hands_its_job_to_the_other_at_once(stack):
    settings, (a, b) = stack
    collection = unique("handover")
    job_id = _load(a, collection)
    _wait_until(lambda: a.job(job_id)["processed"] >= 300, 120, "the load to make progress on a")
    a.stop()  # SIGTERM: uvicorn's shutdown stops the job and hands it back
    assert "Application shutdown complete" in a.tail(), a.tail()
    _job_when(b, job_id, lambda j: _owned_by(j, b), 30, "b to take the job")
    done = _job_when(b, job_id, _ended, 300, "the job to end")
    assert (done["state"], done["processed"], done["failed"]) == ("succeeded", N, 0), done
    assert _stored(settings, collection) == (N, N)
    svc = make_services(settings)
    try:
        assert svc.jobs is not None and svc.jobs.get(job_id).takeovers == 0  # handed, not taken
    finally:
        svc.vectors.close()
        svc.images.close()


def test_a_job_running_on_one_replica_is_cancelled_through_the_other(stack):
    settings, (a, b) = stack
    # A load of N rows ends in ~1.5 s here (precomputed features), about as soon as a cancel
    # reaches its replica (the lease round, <= 1 s): this one is long enough to be stopped.
    write_dataset(settings.data_root / "long", "train", N_LONG, tiny_encoder().dim, seed=6)
    collection = unique("cancel")
    job_id = _load(a, collection, dataset="long")
    _wait_until(lambda: a.job(job_id)["processed"] >= 100, 120, "the load to make progress on a")
    r = b.http.post(f"/img/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    asked = time.monotonic()
    done = _job_when(b, job_id, _ended, 60, "the job to stop")
    stopped_s = time.monotonic() - asked
    assert done["state"] == "cancelled" and done["processed"] < N_LONG, done
    assert _owned_by(done, a), done  # a ran it to the end; b only set the flag
    assert stopped_s < 15, stopped_s
    assert b.http.post(f"/img/jobs/{job_id}/cancel").status_code == 409
    # A cancelled job is not taken over by anyone.
    time.sleep(2 * LEASE_S)
    assert b.job(job_id)["state"] == "cancelled"


def test_the_same_upload_to_both_replicas_at_once_is_stored_once(stack):
    settings, (a, b) = stack
    collection = unique("dedupe")
    assert a.http.post("/img/collections", json={"name": collection}).status_code in (200, 201)
    images = [jpeg(9000 + k) for k in range(4)]
    results: list[tuple[int, str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def upload(replica: Replica, k: int) -> None:
        start.wait()
        r = replica.http.post(
            f"/img/images/{collection}", files={"files": (f"{k}.jpg", images[k], "image/jpeg")}
        )
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        with lock:
            results.append((k, res["status"], res["id"]))

    for _ in range(3):  # rounds: the same images again, now present everywhere
        threads = [threading.Thread(target=upload, args=(rep, k)) for k in range(4) for rep in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert len(results) == 24
    for k in range(4):
        mine = [(status, i) for kk, status, i in results if kk == k]
        assert len({i for _, i in mine}) == 1, mine  # one id whoever answered
        assert sorted(status for status, _ in mine).count("added") == 1, mine
    assert _stored(settings, collection) == (4, 4)


def _top(replica: Replica, collection: str, image: bytes, top_k: int = 3) -> list[int]:
    r = replica.http.post(
        "/img/search/image",
        files={"file": ("q.jpg", image, "image/jpeg")},
        data={"top_k": str(top_k), "collection": collection},
    )
    assert r.status_code == 200, r.text
    return [hit["id"] for hit in r.json()["results"]]


def test_an_add_or_delete_on_one_replica_is_seen_by_the_next_search_on_the_other(stack):
    _, (a, b) = stack
    collection = unique("visible")
    assert a.http.post("/img/collections", json={"name": collection}).status_code in (200, 201)
    # Some images first, so a search always has results to return.
    base = [("f.jpg", jpeg(7000 + k), "image/jpeg") for k in range(12)]  # <= INLINE_ADD_LIMIT
    r = a.http.post(f"/img/images/{collection}", files=[("files", f) for f in base])
    assert r.status_code == 200, r.text
    cached_for = []
    for k in range(8):
        writer, reader = (a, b) if k % 2 == 0 else (b, a)
        image = jpeg(8000 + k)
        r = writer.http.post(f"/img/images/{collection}", files={"files": ("n.jpg", image, "image/jpeg")})
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        assert res["status"] == "added", res
        # A query the reader has not answered before: the add shows at once.
        assert _top(reader, collection, image)[:1] == [res["id"]], f"round {k}: the add is not visible yet"
        assert writer.http.delete(f"/img/images/{collection}/{res['id']}").status_code == 200
        deleted = time.monotonic()
        # A new query (another top_k is another result-cache key): the delete shows at once.
        assert res["id"] not in _top(reader, collection, image, top_k=4), (
            f"round {k}: the delete is not visible"
        )
        # The query the reader answered before the delete may come from its result cache, for
        # at most RESULT_CACHE_TTL_S (2 s by default) after it was cached.
        _wait_until(
            lambda i=res["id"], rd=reader, im=image: i not in _top(rd, collection, im),
            10,
            "the cached result to expire",
        )
        cached_for.append(time.monotonic() - deleted)
    assert max(cached_for) < 2.0 + 1.0, cached_for  # the TTL, plus a search on a busy machine


def test_a_collection_dropped_on_one_replica_is_gone_on_the_other_and_can_be_made_again(stack):
    _, (a, b) = stack
    collection = unique("dropped")
    assert a.http.post("/img/collections", json={"name": collection}).status_code in (200, 201)
    image = jpeg(6000)
    r = a.http.post(f"/img/images/{collection}", files={"files": ("d.jpg", image, "image/jpeg")})
    (res,) = r.json()["results"]
    # b reads it (and caches what it learns of the collection) ...
    assert _top(b, collection, image)[:1] == [res["id"]]
    assert b.http.get(f"/img/images/{collection}/{res['id']}/meta").status_code == 200
    # ... a drops it: b answers 404, never a 500 or a 503.
    assert a.http.delete(f"/img/collections/{collection}").status_code == 200
    r = b.http.post(
        "/img/search/image", files={"file": ("q.jpg", image, "image/jpeg")}, data={"collection": collection}
    )
    assert r.status_code == 404, r.text
    assert b.http.get(f"/img/images/{collection}/{res['id']}/meta").status_code == 404
    assert b.http.get(f"/img/images/{collection}/{res['id']}").status_code == 404
    assert b.http.get(f"/img/collections/{collection}/count").status_code == 404
    r = b.http.post(f"/img/images/{collection}", files={"files": ("d.jpg", image, "image/jpeg")})
    assert r.status_code == 404, r.text
    # Made again on a: b adds to it and finds the image.
    assert a.http.post("/img/collections", json={"name": collection}).status_code in (200, 201)
    r = b.http.post(f"/img/images/{collection}", files={"files": ("d.jpg", image, "image/jpeg")})
    assert r.status_code == 200, r.text
    (again,) = r.json()["results"]
    assert again["status"] == "added"
    assert _top(a, collection, image)[:1] == [again["id"]]
    assert _top(b, collection, image)[:1] == [again["id"]]


def test_a_rebuild_switched_on_one_replica_moves_the_others_searches_and_writes(stack):
    """The name table is SQL: replica b follows a switch made by a's rebuild job within
    ALIAS_REFRESH_S (its searches answer from the old version, never fail, until then), and
    its writes go to the new version at once."""
    _, (a, b) = stack
    collection = unique("switched")
    assert a.http.post("/img/collections", json={"name": collection}).status_code in (200, 201)
    base = [("f.jpg", jpeg(9100 + k), "image/jpeg") for k in range(12)]
    assert a.http.post(f"/img/images/{collection}", files=[("files", f) for f in base]).status_code == 200

    def model(replica: Replica) -> str:
        r = replica.http.post("/img/search", json={"query": "红色", "collection": collection, "top_k": 3})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 3
        return r.json()["model"]

    assert model(b) == "tiny"
    r = a.http.post(f"/img/collections/{collection}/rebuild", json={"model": "tiny-b", "switch": True})
    assert r.status_code == 202, r.text
    job = _job_when(a, r.json()["job_id"], _ended, 120, "the rebuild to end")
    ended = time.monotonic()
    assert job["state"] == "succeeded" and "switched" in job["message"], job["message"]
    assert model(a) == "tiny-b"  # the replica that switched: at once
    _wait_until(lambda: model(b) == "tiny-b", ALIAS_REFRESH_S + 5, "replica b to follow the switch")
    assert time.monotonic() - ended < ALIAS_REFRESH_S + 1.5  # the bound, plus a busy machine
    image = jpeg(9200)
    r = b.http.post(f"/img/images/{collection}", files={"files": ("n.jpg", image, "image/jpeg")})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert _top(a, collection, image)[:1] == [res["id"]]
    listed = {c["name"]: c for c in b.http.get("/img/collections").json()}
    assert listed[collection]["alias_of"] == f"{collection}__v2"
    assert listed[f"{collection}__v2"]["images"] == 13 and listed[f"{collection}__v1"]["images"] == 12
