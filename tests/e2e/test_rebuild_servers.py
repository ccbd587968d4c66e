"""A zero-downtime model switch on the Milvus 2.3 server and MariaDB, with two replicas.

A collection of the demo split's images is built with a second small model (random weights,
"tiny"), then rebuilt with the trained demo model while both replicas search it and one
adds and deletes images: the recall check on the labelled split passes, the name switches,
searches never fail and move to the demo model (the other replica within ALIAS_REFRESH_S),
every acknowledged write is in the new collection, the old one stays until dropped (refused
while the alias points at it), and the Milvus alias follows. Then an index-only rebuild
(FLAT -> HNSW) copies the vectors. The same on Lite + SQLite, with faults:
tests/api/test_rebuild.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from datasets import demo_generator as g
from operations.aliases import StoreName
from operations.factory import build_services
from operations.images import decode_b64_image
from tests.stack import REPO, jpeg, make_settings, tiny_encoder

N_IMAGES = 300
# The trained demo model, served beside the default small random-weight one ("tiny").
DEMO = {
    "checkpoint": str(REPO / "models" / "demo" / "demo-tiny.pt"),
    "arch": str(REPO / "config" / "model_configs" / "demo-tiny.json"),
}
REFRESH_S = 1.0

pytestmark = pytest.mark.services


def _wait(c: TestClient, job_id: str, timeout_s: float = 300) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job = c.get(f"/img/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


def _replica(settings):
    svc = build_services(settings, encoder=tiny_encoder())
    assert svc.jobs is not None
    svc.jobs.ensure_tables()
    return TestClient(create_app(settings, svc)), svc


def test_model_switch_without_downtime_then_an_index_rebuild(tmp_path, milvus_server, mariadb):
    settings = make_settings(
        tmp_path,
        milvus_server.uri,
        mariadb.create_database(),
        extra_models={"demo-tiny": DEMO},
        alias_refresh_s=REFRESH_S,
        rebuild_switch_grace_s=0.5,
    )
    data = g.generate_split("valid", N_IMAGES, seed=7)
    g.write_split(data, tmp_path / "data" / "demo")
    gone, kept = data.image_ids[4:6], data.image_ids[10:50]
    a_client, a = _replica(settings)
    b_client, b = _replica(settings)
    with a_client as ca, b_client as cb:
        assert ca.post("/img/collections", json={"name": "shop"}).status_code == 201
        job = ca.post("/img/load", json={"dataset": "demo", "split": "valid", "collection": "shop"}).json()
        assert _wait(ca, job["id"])["state"] == "succeeded"
        for c in (ca, cb):
            assert (
                c.post("/img/search", json={"query": "红色圆形", "collection": "shop"}).json()["model"]
                == "tiny"
            )

        stop = threading.Event()
        errors: list[str] = []
        seen: dict[str, list[tuple[float, str]]] = {"a": [], "b": []}
        added: list[int] = []
        refused: list[str] = []

        def search(name: str, c: TestClient) -> None:
            while not stop.is_set():
                r = c.post("/img/search", json={"query": "蓝色的正方形", "collection": "shop", "top_k": 5})
                if r.status_code != 200 or len(r.json()["results"]) != 5:
                    errors.append(f"{name}: {r.status_code} {r.text[:200]}")
                else:
                    seen[name].append((time.monotonic(), r.json()["model"]))
                time.sleep(0.05)

        def write() -> None:
            seed = 50_000
            while not stop.is_set():
                r = ca.post("/img/images/shop", files={"files": ("w.jpg", jpeg(seed), "image/jpeg")})
                if r.status_code == 503:  # the switch's fence: retried, as a client does
                    refused.append(r.headers.get("Retry-After", ""))
                    time.sleep(0.2)
                    continue
                if r.status_code != 200:
                    errors.append(f"add: {r.status_code} {r.text[:200]}")
                else:
                    added.append(r.json()["results"][0]["id"])
                seed += 1
                time.sleep(0.1)

        threads = [
            threading.Thread(target=search, args=("a", ca)),
            threading.Thread(target=search, args=("b", cb)),
            threading.Thread(target=write),
        ]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            r = ca.post(
                "/img/collections/shop/rebuild",
                json={
                    "model": "demo-tiny",
                    "dataset": "demo",
                    "split": "valid",
                    "min_recall": 0.3,
                    "switch": True,
                },
            )
            assert r.status_code == 202, r.text
            # A delete made while the rebuild runs.
            assert ca.post("/img/images/shop/delete", json={"ids": gone}).json()["deleted"] == 2
            job = _wait(ca, r.json()["id"])
            switched_at = time.monotonic()
            time.sleep(REFRESH_S + 1.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert job["state"] == "succeeded", job["message"]
        assert "switched 'shop' from shop__v1 to shop__v2" in job["message"]
        # The trained model's recall meets the bar; the random one's (the old collection) not.
        new = float(job["message"].split("shop__v2 R@1 ")[1].split(" R@10 ")[1].split(";")[0])
        old = float(job["message"].split("; shop R@1 ")[1].split(" R@10 ")[1].split(";")[0])
        assert new >= 0.3 > old, job["message"]
        assert errors == [], errors[:5]
        assert all(v == "2" for v in refused)
        for name in ("a", "b"):
            models = [m for _, m in seen[name]]
            assert models[0] == "tiny" and models[-1] == "demo-tiny"
            # Once moved, never back; replica b within ALIAS_REFRESH_S of the switch.
            first_new = models.index("demo-tiny")
            assert set(models[first_new:]) == {"demo-tiny"}
            late = [t for t, m in seen[name] if m == "tiny" and t > switched_at + REFRESH_S + 0.5]
            assert late == []
        # Every acknowledged write is in the new collection; the deleted ids are not.
        assert added
        assert a.vectors.existing_ids("shop", added) == set(added)
        assert set(a.images.get_rows("shop", added)) == set(added)
        assert a.vectors.existing_ids("shop", gone) == set() and a.images.get_rows("shop", gone) == {}
        assert a.images.count("shop") == a.vectors.count("shop") == N_IMAGES - 2 + len(added)
        # The new vectors are the demo model's; the old collection still holds tiny's.
        v_new = a.vectors.get_vectors("shop", kept[:1])[kept[0]]
        v_old = a.vectors.get_vectors("shop__v1", kept[:1])[kept[0]]
        image = decode_b64_image(
            a.images.get_rows("shop", kept[:1], with_image=True)[kept[0]].image_b64, 10**8
        )
        assert np.allclose(v_new, a.encoders.get("demo-tiny").encode_images([image])[0], atol=1e-4)
        assert np.allclose(v_old, tiny_encoder().encode_images([image])[0], atol=1e-4)
        listed = {x["name"]: x for x in cb.get("/img/collections").json()}
        assert listed["shop"]["alias_of"] == "shop__v2" and listed["shop"]["model"] == "demo-tiny"
        assert listed["shop__v1"]["model"] == "tiny" and listed["shop__v1"]["physical"] == "shop"
        # Dropping what the alias names is refused; the old version drops; then the Milvus
        # alias takes the freed name.
        assert cb.delete("/img/collections/shop__v2").status_code == 409
        assert a.vectors.alias_target("shop") is None  # a collection still carries the name
        assert cb.delete("/img/collections/shop__v1").status_code == 200
        assert a.vectors.alias_target("shop") == "shop__v2"

        # Index only: FLAT -> HNSW, the vectors copied, not encoded.
        before = a.vectors.get_vectors("shop", kept)
        assert len(before) == len(kept)
        r = ca.post(
            "/img/collections/shop/rebuild",
            json={
                "index_type": "HNSW",
                "index_params": {"M": 16, "efConstruction": 64},
                "search_params": {"ef": 64},
                "switch": True,
            },
        )
        job = _wait(ca, r.json()["id"])
        assert job["state"] == "succeeded" and "copied, same model" in job["message"], job["message"]
        got = ca.get("/img/collections/shop").json()
        assert got["index_type"] == "HNSW" and got["physical"] == "shop__v3" and got["model"] == "demo-tiny"
        after = a.vectors.get_vectors(StoreName("shop__v3"), list(before))
        assert all(np.array_equal(before[i], after[i]) for i in before)
        assert a.vectors.alias_target("shop") == "shop__v3"
        found = cb.post("/img/search", json={"query": "红色圆形", "collection": "shop", "top_k": 5}).json()
        assert found["model"] == "demo-tiny" and len(found["results"]) == 5
        for name in ("shop", "shop__v2"):
            assert ca.delete(f"/img/collections/{name}").status_code == 200
        assert a.vectors.alias_target("shop") is None
