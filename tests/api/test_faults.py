"""Milvus or MySQL down, hung or restarted: 503 with Retry-After, never a crash, and
recovery by itself when they return. Real servers only."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.stack import jpeg, make_services, make_settings, unique

pytestmark = pytest.mark.services


@pytest.fixture
def client(request, tmp_path, milvus_server, mariadb):
    settings = make_settings(
        tmp_path, milvus_server.uri, mariadb.create_database(), milvus_timeout_s=3, sql_timeout_s=3
    )
    svc = make_services(settings)
    with TestClient(create_app(settings, svc), raise_server_exceptions=False) as c:
        c.collection = unique("fault")
        # The previous fault test may leave Milvus still reloading (503s for a while,
        # as designed); set up once it answers again.
        deadline = time.time() + 120
        while (r := c.post("/img/collections", json={"name": c.collection})).status_code == 503:
            assert time.time() < deadline, r.text
            time.sleep(2)
        assert r.status_code == 201, r.text
        added = c.post(
            f"/img/images/{c.collection}",
            files=[("files", (f"{i}.jpg", jpeg(70 + i), "image/jpeg")) for i in range(3)],
        )
        assert [r["status"] for r in added.json()["results"]] == ["added"] * 3
        yield c


def _search(c):
    return c.post("/img/search", json={"query": "红色的圆形", "collection": c.collection, "top_k": 3})


def _eventually_ok(c, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = _search(c)
        if r.status_code == 200:
            assert len(r.json()["results"]) == 3
            return
        assert r.status_code == 503, r.text
        time.sleep(1)
    raise AssertionError("search did not recover")


def _assert_503(response, within_s: float, started: float) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "dependency_unavailable"
    assert time.time() - started < within_s


def test_milvus_stopped_gives_503_then_recovers(client, milvus_server):
    assert _search(client).status_code == 200
    with milvus_server.down():
        t = time.time()
        _assert_503(_search(client), 10, t)
        t = time.time()
        _assert_503(
            client.post("/img/search/image", data={"image_id": "1", "collection": client.collection}), 10, t
        )
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["milvus"] != "ok"
        assert client.get("/healthz").status_code == 200  # the process itself is fine
    _eventually_ok(client)
    assert client.get("/readyz").status_code == 200


def test_milvus_hung_gives_503_within_the_timeout(client, milvus_server):
    assert _search(client).status_code == 200
    with milvus_server.paused():
        t = time.time()
        _assert_503(_search(client), 3 * 2 + 5, t)  # milvus_timeout_s=3 per call
    _eventually_ok(client)


def test_mariadb_restart_is_survived_and_down_is_503(client, mariadb):
    assert _search(client).status_code == 200
    mariadb.restart()  # pooled connections are now dead: pre-ping must replace them
    r = _search(client)
    assert r.status_code == 200, r.text
    with mariadb.down():
        t = time.time()
        _assert_503(_search(client), 10, t)
        t = time.time()
        _assert_503(
            client.post(
                f"/img/images/{client.collection}", files={"files": ("n.jpg", jpeg(999), "image/jpeg")}
            ),
            10,
            t,
        )
        assert client.get("/readyz").status_code == 503
    _eventually_ok(client)
    # The add that failed while SQL was down stored nothing: it can be added now.
    again = client.post(
        f"/img/images/{client.collection}", files={"files": ("n.jpg", jpeg(999), "image/jpeg")}
    )
    assert again.json()["results"][0]["status"] == "added"
    counts = client.get(f"/img/collections/{client.collection}/count").json()
    assert counts["images"] == counts["vectors"] == 4


def test_add_while_milvus_is_down_leaves_no_orphan_row(client, milvus_server):
    with milvus_server.down():
        r = client.post(
            f"/img/images/{client.collection}", files={"files": ("m.jpg", jpeg(1234), "image/jpeg")}
        )
        assert r.status_code == 503
    _eventually_ok(client)
    counts = client.get(f"/img/collections/{client.collection}/count").json()
    assert counts["images"] == counts["vectors"] == 3
    again = client.post(
        f"/img/images/{client.collection}", files={"files": ("m.jpg", jpeg(1234), "image/jpeg")}
    )
    assert again.json()["results"][0]["status"] == "added"
