"""AUTO_REINDEX (operations.reindex): a collection AUTO made FLAT that adds grow to
AUTO_INDEX_FLAT_BELOW vectors is rebuilt as HNSW and switched to by one background rebuild job,
searches answering all along; never for a collection made FLAT by hand, nor with the setting off;
a store error in the check leaves the add alone. On Lite + SQLite through the HTTP API, and
once on the Milvus 2.3 server + MariaDB."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from operations.aliases import StoreName
from operations.errors import DependencyUnavailable
from operations.reindex import auto_job_id
from tests.stack import TINY_ARCH, jpeg, make_services, make_settings

FLAT_BELOW = 40
BATCH = 10  # files per add request (inline: under INLINE_ADD_LIMIT)


def _app(settings):
    svc = make_services(settings)
    c = TestClient(create_app(settings, svc))
    c.services = svc
    return c


def _lite(tmp_path, **overrides):
    return _app(
        make_settings(
            tmp_path,
            rebuild_switch_grace_s=0.1,
            alias_refresh_s=0.2,
            auto_index_flat_below=FLAT_BELOW,
            **overrides,
        )
    )


def _add(c: TestClient, name: str, seeds: range) -> list[int]:
    """One add request of distinct JPEGs, retried as a client would on the switch's 503 (an add
    the fence cut off may have stored some rows: the retry finds those "present")."""
    files = [("files", (f"{s}.jpg", jpeg(s), "image/jpeg")) for s in seeds]
    refused = 0
    for _ in range(50):
        r = c.post(f"/img/images/{name}", files=files)
        if r.status_code != 503:
            break
        refused += 1
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    ok = {"added", "present"} if refused else {"added"}
    assert {x["status"] for x in results} <= ok and len(results) == len(seeds), results
    return [x["id"] for x in results]


def _idle(c: TestClient) -> None:
    """The checks queued by the writes so far have run."""
    c.app.state.runner.reindex.wait_idle()


def _rebuilds(c: TestClient) -> list[dict]:
    return [j for j in c.get("/img/jobs").json() if j["kind"] == "rebuild"]


def _wait(c: TestClient, job_id: str, timeout_s: float = 60) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job = c.get(f"/img/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {job}")


def _grow_past_the_size_while_searching(c: TestClient, name: str) -> tuple[list[int], dict]:
    """Adds that cross the size, one more add while the rebuild runs, a search loop throughout:
    every search's status, the ids added and the one rebuild job (ended)."""
    statuses: list[int] = []
    stop = threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            r = c.post("/img/search", json={"query": "红色 方块", "collection": name, "top_k": 5})
            statuses.append(r.status_code)

    # The first add before the searches start: two threads' first imports of scipy at once
    # (imagehash's pHash, lazily) can fail in importlib, which is not what this test is about.
    ids = _add(c, name, range(0, BATCH))
    searcher = threading.Thread(target=search_loop)
    searcher.start()
    try:
        for start in range(BATCH, FLAT_BELOW, BATCH):
            ids += _add(c, name, range(start, start + BATCH))
        _idle(c)
        started = _rebuilds(c)
        assert len(started) == 1 and started[0]["collection"] == name, started
        job_id = started[0]["id"]
        # Added while the rebuild runs: lands in the old version and is caught up, or after the
        # switch in the new one; either way it starts no second job.
        ids += _add(c, name, range(FLAT_BELOW, FLAT_BELOW + BATCH))
        job = _wait(c, job_id)
        _idle(c)
        time.sleep(0.3)  # a search or two on the switched name
    finally:
        stop.set()
        searcher.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert [j["id"] for j in _rebuilds(c)] == [job_id]
    return ids, job


def test_adds_past_the_size_start_one_rebuild_that_switches_to_hnsw(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="operations.reindex")
    with _lite(tmp_path) as c:
        r = c.post("/img/collections", json={"name": "shop", "index_type": "AUTO"})
        assert r.status_code == 201 and r.json()["index_type"] == "FLAT"
        ids, job = _grow_past_the_size_while_searching(c, "shop")
        assert job["state"] == "succeeded", job["message"]
        assert "copied, same model" in job["message"] and "switched 'shop'" in job["message"]
        got = c.get("/img/collections/shop").json()
        assert got["index_type"] == "HNSW" and got["physical"] == "shop__v2"
        assert got["auto_index"] == {"flat_below": FLAT_BELOW, "reindex_due": False}
        assert got["vectors"] == got["images"] == len(ids) == FLAT_BELOW + BATCH
        # Every added image is in the new version, and found by its own picture.
        svc = c.services
        assert svc.vectors.existing_ids(StoreName("shop__v2"), ids) == set(ids)
        for seed, image_id in [(0, ids[0]), (FLAT_BELOW + 3, ids[FLAT_BELOW + 3])]:
            r = c.post(
                "/img/search/image",
                files={"file": ("q.jpg", jpeg(seed), "image/jpeg")},
                data={"collection": "shop", "top_k": "1"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["id"] == image_id
    started = [r for r in caplog.records if "automatic re-index of shop" in r.getMessage()]
    assert len(started) == 1 and started[0].levelno == logging.INFO
    assert job["id"] in started[0].getMessage() and f">= AUTO_INDEX_FLAT_BELOW {FLAT_BELOW}" in (
        started[0].getMessage()
    )


def test_describe_names_the_rebuild_under_way(tmp_path, monkeypatch):
    """While due, describe names the automatic rebuild; a rebuild cancelled is not restarted by
    later adds (left to the operator), and describe says so."""
    from operations import rebuild

    gate = threading.Event()
    real_sync = rebuild.sync

    def held_sync(*args, **kwargs):  # the copy waits until the test has looked
        gate.wait(10)
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(rebuild, "sync", held_sync)
    with _lite(tmp_path) as c:
        c.post("/img/collections", json={"name": "shop", "index_type": "AUTO"})
        for start in range(0, FLAT_BELOW, BATCH):
            _add(c, "shop", range(start, start + BATCH))
        _idle(c)
        (job,) = _rebuilds(c)
        got = c.get("/img/collections/shop").json()["auto_index"]
        assert got["reindex_due"] is True
        assert got["reindex_job"]["id"] == job["id"] and got["reindex_job"]["automatic"] is True
        assert got["reindex_job"]["state"] in ("queued", "running")
        assert c.post(f"/img/jobs/{job['id']}/cancel").status_code in (200, 202)
        gate.set()
        assert _wait(c, job["id"])["state"] == "cancelled"
        _add(c, "shop", range(100, 105))
        _idle(c)
        assert [j["id"] for j in _rebuilds(c)] == [job["id"]]
        got = c.get("/img/collections/shop").json()
        assert got["index_type"] == "FLAT" and got["auto_index"]["reindex_job"]["state"] == "cancelled"


@pytest.mark.parametrize("case", ["setting off", "flat by hand"])
def test_no_rebuild_with_the_setting_off_or_for_a_collection_made_flat(tmp_path, case):
    overrides = {"auto_reindex": False} if case == "setting off" else {}
    index = "AUTO" if case == "setting off" else "FLAT"
    with _lite(tmp_path, **overrides) as c:
        assert c.post("/img/collections", json={"name": "shop", "index_type": index}).status_code == 201
        for start in range(0, FLAT_BELOW, BATCH):
            _add(c, "shop", range(start, start + BATCH))
        _idle(c)  # the checks have run (a job they start is listed before they end)
        assert _rebuilds(c) == []
        got = c.get("/img/collections/shop").json()
        assert got["index_type"] == "FLAT" and got["vectors"] == FLAT_BELOW
        if case == "setting off":
            assert got["auto_index"] == {"flat_below": FLAT_BELOW, "reindex_due": True}
        else:
            assert got["auto_index"] is None


def test_a_load_job_past_the_size_starts_the_rebuild_when_it_ends(tmp_path):
    from tests.stack import tiny_encoder, write_dataset

    with _lite(tmp_path) as c:
        c.post("/img/collections", json={"name": "shop", "index_type": "AUTO"})
        write_dataset(tmp_path / "data" / "ds", "valid", FLAT_BELOW + 5, tiny_encoder().dim, seed=3)
        load = c.post("/img/load", json={"dataset": "ds", "split": "valid", "collection": "shop"}).json()
        assert _wait(c, load["id"])["state"] == "succeeded"
        deadline = time.monotonic() + 10
        while not _rebuilds(c) and time.monotonic() < deadline:
            time.sleep(0.05)
        (job,) = _rebuilds(c)
        assert _wait(c, job["id"])["state"] == "succeeded", job
        got = c.get("/img/collections/shop").json()
        assert got["index_type"] == "HNSW" and got["vectors"] == FLAT_BELOW + 5


def test_a_store_error_in_the_check_leaves_the_add_alone_and_is_logged(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="operations.reindex")
    with _lite(tmp_path) as c:
        c.post("/img/collections", json={"name": "shop", "index_type": "AUTO"})
        for start in range(0, FLAT_BELOW - BATCH, BATCH):
            _add(c, "shop", range(start, start + BATCH))
        jobs = c.services.jobs

        def down(*args, **kwargs):
            raise DependencyUnavailable("sqlite", "database is locked")

        monkeypatch.setattr(jobs, "latest_of", down)
        ids = _add(c, "shop", range(FLAT_BELOW - BATCH, FLAT_BELOW))  # asserts 200, all added
        _idle(c)
        assert len(ids) == BATCH and _rebuilds(c) == []
        failed = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(failed) == 1 and failed[0].exc_info is None
        assert "automatic re-index check of shop failed" in failed[0].getMessage()
        assert "database is locked" in failed[0].getMessage()
        # Back: the next add's check starts it.
        monkeypatch.undo()
        _add(c, "shop", range(100, 101))
        _idle(c)
        (job,) = _rebuilds(c)
        assert _wait(c, job["id"])["state"] == "succeeded"


def test_a_replica_that_loses_the_race_is_told_conflict_by_the_job_table(tmp_path, caplog, monkeypatch):
    """Two replicas see the threshold at once: both compute the same new version, so the same
    job id, and the job table's key lets one in. Replica A's row is written here as A would
    (claimed by A); this replica's check ran a moment before it (it saw no job)."""
    caplog.set_level(logging.INFO, logger="operations.reindex")
    with _lite(tmp_path, auto_reindex=False) as c:
        c.post("/img/collections", json={"name": "shop", "index_type": "AUTO"})
        for start in range(0, FLAT_BELOW, BATCH):
            _add(c, "shop", range(start, start + BATCH))
        svc, runner = c.services, c.app.state.runner
        from operations.rebuild import rebuild_params

        params = {**rebuild_params(svc, "shop", switch=True), "automatic": True}
        assert params["target"] == "shop__v2"
        theirs = svc.jobs.create(
            "rebuild", "shop", params, auto_job_id("shop", "shop__v2"), owner="replica-a", lease_s=300
        )
        monkeypatch.setattr(svc.settings, "auto_reindex", True)
        monkeypatch.setattr(svc.jobs, "latest_of", lambda kind, collection: None)
        monkeypatch.setattr(runner, "running_on", lambda collection: [])
        _add(c, "shop", range(100, 101))
        _idle(c)
        assert [j["id"] for j in _rebuilds(c)] == [theirs.id]
        lost = [r for r in caplog.records if "not started here" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.INFO
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        svc.jobs.request_cancel(theirs.id)


def test_adds_past_the_size_rebuild_on_the_servers(tmp_path, milvus_server, mariadb):
    """The same on the Milvus 2.3 server + MariaDB (one rebuild, searches all 200, switched)."""
    settings = make_settings(
        tmp_path,
        milvus_server.uri,
        mariadb.create_database(),
        rebuild_switch_grace_s=0.1,
        alias_refresh_s=0.2,
        auto_index_flat_below=FLAT_BELOW,
    )
    with _app(settings) as c:
        name = f"grow{int(time.time() * 1000) % 10**9}"
        assert c.post("/img/collections", json={"name": name, "index_type": "AUTO"}).json()["index_type"] == (
            "FLAT"
        )
        ids, job = _grow_past_the_size_while_searching(c, name)
        assert job["state"] == "succeeded", job["message"]
        got = c.get(f"/img/collections/{name}").json()
        assert got["index_type"] == "HNSW" and got["physical"] == f"{name}__v2"
        assert got["auto_index"]["reindex_due"] is False and got["vectors"] == len(ids)
        assert c.services.vectors.existing_ids(StoreName(f"{name}__v2"), ids) == set(ids)
        for n in (name, f"{name}__v1"):
            c.delete(f"/img/collections/{n}")


def test_a_command_line_load_that_grows_past_the_size_says_how_to_re_index(tmp_path, monkeypatch, capsys):
    # The command line runs no jobs: the load says the re-index is due, and the command it
    # names does it (HNSW, the name switched, every vector kept).
    import json

    from datasets.formats import write_image_tsv
    from scripts import cli

    ds = tmp_path / "ds"
    ds.mkdir()
    write_image_tsv(ds / "valid_imgs.tsv", [(i, jpeg(i)) for i in range(1, 31)])
    write_image_tsv(ds / "test_imgs.tsv", [(i, jpeg(i)) for i in range(31, 51)])
    env = {
        "MODEL_NAME": "tiny",
        "MODEL_ARCH": str(TINY_ARCH),
        "MODEL_RANDOM_INIT": "true",
        "MILVUS_URI": str(tmp_path / "milvus.db"),
        "SQLITE_PATH": str(tmp_path / "images.sqlite3"),
        "DEVICE": "cpu",
        "ENCODER_BACKEND": "torch",
        "INDEX_TYPE": "AUTO",
        "AUTO_INDEX_FLAT_BELOW": str(FLAT_BELOW),
        "REBUILD_SWITCH_GRACE_S": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no .env of the repository is read
    load = ["load", "--dataset", str(ds), "--collection", "shop", "--split"]
    assert cli.main([*load, "valid"]) == 0  # 30 < 40: FLAT, nothing due
    assert "rebuild shop --switch" not in capsys.readouterr().err
    assert cli.main([*load, "test"]) == 0  # 50 >= 40
    err = capsys.readouterr().err
    assert "`python -m scripts.cli rebuild shop --switch`, or the server's next add" in err, err
    # A rebuild that gave up (here: cancelled) means no automatic re-index follows; the next
    # load names that job and both ways on.
    from config.settings import load_settings
    from operations.factory import build_services

    svc = build_services(load_settings(), lazy_model=True)
    try:
        svc.jobs.ensure_tables()  # as a server over the same stores makes them
        gave_up = svc.jobs.create("rebuild", "shop", {"automatic": True})
        svc.jobs.finish(gave_up.id, "cancelled")
    finally:
        svc.images.close()
    assert cli.main([*load, "test"]) == 0  # the same 20 again: still 50, still due
    err = capsys.readouterr().err
    assert f"rebuild job {gave_up.id} cancelled and no automatic re-index follows" in err, err
    assert f"`POST /img/jobs/{gave_up.id}/resume`" in err and "rebuild shop --switch`" in err, err
    assert cli.main(["rebuild", "shop", "--switch"]) == 0
    capsys.readouterr()
    assert cli.main(["list"]) == 0
    listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["shop"]["index_type"] == "HNSW" and listed["shop"]["vectors"] == 50, listed["shop"]
    assert listed["shop"]["auto_index"]["reindex_due"] is False
