"""Rebuilding a collection into a new version (another model or index) and switching its name
(operations.rebuild, operations.aliases) on Milvus Lite + SQLite, with two small random models
that differ ("tiny" and "tiny-b", another seed). The same path on the Milvus 2.3 server and
MariaDB, with the trained demo model, searches and writes during the rebuild and a second
replica: tests/e2e/test_rebuild_servers.py."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from datasets.formats import write_image_tsv, write_texts_jsonl
from operations.aliases import StoreName
from operations.errors import DependencyUnavailable
from operations.images import decode_b64_image
from tests.stack import TINY_ARCH, jpeg, make_services, make_settings

N_IMAGES = 60
TINY_B = {"arch": str(TINY_ARCH), "random_init": True, "seed": 1}


def _split(root: Path) -> list[int]:
    """A labelled split: N_IMAGES small JPEGs and 30 captions, each with its image ids."""
    ds = root / "data" / "ds"
    ds.mkdir(parents=True, exist_ok=True)
    ids = list(range(1, N_IMAGES + 1))
    write_image_tsv(ds / "valid_imgs.tsv", [(i, jpeg(i)) for i in ids])
    write_texts_jsonl(
        ds / "valid_texts.jsonl",
        [
            (t, f"第{t}张图 红色 方块", [ids[(7 * t) % N_IMAGES], ids[(7 * t + 3) % N_IMAGES]])
            for t in range(30)
        ],
    )
    return ids


def wait(c: TestClient, job_id: str, timeout_s: float = 120) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job = c.get(f"/img/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


@pytest.fixture
def stack(tmp_path):
    settings = make_settings(
        tmp_path,
        extra_models={"tiny-b": TINY_B},
        rebuild_switch_grace_s=0.1,
        alias_refresh_s=0.2,
        auto_index_flat_below=40,
    )
    svc = make_services(settings)
    ids = _split(tmp_path)
    with TestClient(create_app(settings, svc)) as c:
        c.services = svc
        job = c.post("/img/load", json={"dataset": "ds", "split": "valid", "collection": "shop"}).json()
        assert wait(c, job["id"])["state"] == "succeeded"
        c.ids = ids
        yield c


def _search(c, query="红色 方块") -> dict:
    r = c.post("/img/search", json={"query": query, "collection": "shop", "top_k": 10})
    assert r.status_code == 200, r.text
    return r.json()


def _expected_recall(c, model: str, ids: list[int], tmp: Path) -> dict:
    """Recall@1/5/10 worked out here, independently: the model's own vectors of every image
    (encoded from the split's JPEGs) ranked exactly against each caption."""
    from datasets.formats import iter_texts

    enc = c.services.encoders.get(model)
    feats = enc.encode_images([decode_b64_image(_b64(jpeg(i)), 10**8) for i in ids])
    texts = list(iter_texts(tmp / "data" / "ds" / "valid_texts.jsonl"))
    q = enc.encode_texts([t.text for t in texts])
    out = {}
    for k in (1, 5, 10):
        hits = 0
        for t, v in zip(texts, q, strict=True):
            scores = feats @ v
            top = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:k]]
            hits += any(i in top for i in t.image_ids)
        out[k] = hits / len(texts)
    return out


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def test_model_rebuild_checks_recall_switches_and_keeps_the_old_one(stack, tmp_path):
    c = stack
    before = _search(c)
    assert before["model"] == "tiny"
    listed = {x["name"]: x for x in c.get("/img/collections").json()}
    assert listed["shop"]["physical"] == "shop" and listed["shop"]["alias_of"] is None

    r = c.post(
        "/img/collections/shop/rebuild",
        json={"model": "tiny-b", "dataset": "ds", "split": "valid", "min_recall": 0.0, "switch": True},
    )
    assert r.status_code == 202, r.text
    assert r.json()["params"]["target"] == "shop__v2"
    job = wait(c, r.json()["id"])
    assert job["state"] == "succeeded", job["message"]
    assert "switched 'shop' from shop__v1 to shop__v2" in job["message"]
    # The recall the job reports is the one worked out here from the images themselves.
    expected = _expected_recall(c, "tiny-b", c.ids, tmp_path)
    reported = job["message"].split("recall on valid (30 captions): shop__v2 ")[1]
    for k in (1, 5, 10):
        assert f"R@{k} {expected[k]:.4f}" in reported.split(";")[0]

    after = _search(c)
    assert after["model"] == "tiny-b" and after["collection"] == "shop"
    assert {h["id"] for h in after["results"]} <= set(c.ids)
    listed = {x["name"]: x for x in c.get("/img/collections").json()}
    assert set(listed) == {"shop", "shop__v1", "shop__v2"}
    assert listed["shop"]["alias_of"] == "shop__v2" and listed["shop"]["model"] == "tiny-b"
    assert listed["shop__v1"]["physical"] == "shop" and listed["shop__v1"]["model"] == "tiny"
    assert listed["shop__v2"]["aliased_by"] == ["shop"] and listed["shop__v2"]["vectors"] == N_IMAGES
    # Other vectors: the new model's, encoded from the stored images.
    svc = c.services
    old = svc.vectors.get_vectors("shop__v1", [1])[1]
    new = svc.vectors.get_vectors("shop", [1])[1]
    want = svc.encoders.get("tiny-b").encode_images([decode_b64_image(_b64(jpeg(1)), 10**8)])[0]
    assert not np.allclose(old, new, atol=1e-3) and np.allclose(new, want, atol=1e-4)
    # The old collection is still searchable by its own name, with its own model.
    old_search = c.post("/img/search", json={"query": "红色", "collection": "shop__v1"}).json()
    assert old_search["model"] == "tiny" and len(old_search["results"]) == 10
    # Writes go to the new collection; the old one stays as it was.
    added = c.post("/img/images/shop", files={"files": ("n.jpg", jpeg(9999), "image/jpeg")}).json()
    new_id = added["results"][0]["id"]
    assert svc.vectors.existing_ids("shop", [new_id]) == {new_id}
    assert svc.vectors.existing_ids("shop__v2", [new_id]) == {new_id}
    assert svc.vectors.existing_ids("shop__v1", [new_id]) == set()
    # Dropping what the alias points at is refused; the old version drops.
    r = c.delete("/img/collections/shop__v2")
    assert r.status_code == 409 and r.json()["error"]["details"]["aliases"] == ["shop"]
    assert c.delete("/img/collections/shop__v1").status_code == 200
    assert {x["name"] for x in c.get("/img/collections").json()} == {"shop", "shop__v2"}
    # The name freed in Milvus becomes a Milvus alias too (Milvus Lite has them).
    assert svc.vectors.alias_target("shop") == "shop__v2"
    assert _search(c)["model"] == "tiny-b"


def test_a_recall_below_min_recall_does_not_switch_until_asked(stack):
    c = stack
    r = c.post(
        "/img/collections/shop/rebuild",
        json={"model": "tiny-b", "dataset": "ds", "split": "valid", "min_recall": 1.0, "switch": True},
    )
    job = wait(c, r.json()["id"])
    assert job["state"] == "succeeded"
    assert "is below min_recall 1.0" in job["message"] and "not switched" in job["message"]
    assert _search(c)["model"] == "tiny"
    listed = {x["name"]: x for x in c.get("/img/collections").json()}
    assert listed["shop__v2"]["model"] == "tiny-b" and listed["shop__v2"]["aliased_by"] == []
    # The user looked at the recall and switches anyway.
    r = c.post("/img/collections/shop/switch", json={"to": "shop__v2"})
    assert r.status_code == 200, r.text
    assert r.json() == {"alias": "shop", "from": "shop__v1", "to": "shop__v2", "caught_up": 0}
    assert _search(c)["model"] == "tiny-b"
    # ... and back to the old one, which is still there.
    r = c.post("/img/collections/shop/switch", json={"to": "shop__v1"})
    assert r.status_code == 200 and r.json()["from"] == "shop__v2"
    assert _search(c)["model"] == "tiny"
    assert c.post("/img/collections/shop/switch", json={"to": "other"}).status_code == 422
    assert c.post("/img/collections/shop/switch", json={"to": "shop__v9"}).status_code == 404


def test_index_rebuild_copies_the_vectors_and_auto_reindexes_a_grown_collection(tmp_path):
    """A collection AUTO made FLAT grew past AUTO_INDEX_FLAT_BELOW (describe: reindex_due): a
    rebuild with no index re-chooses AUTO for its size, HNSW, copying the vectors. Started by
    hand here (AUTO_REINDEX off; the automatic one: tests/api/test_auto_reindex.py)."""
    settings = make_settings(
        tmp_path, rebuild_switch_grace_s=0.1, auto_index_flat_below=40, auto_reindex=False
    )
    svc = make_services(settings)
    _split(tmp_path)
    with TestClient(create_app(settings, svc)) as c:
        assert (
            c.post("/img/collections", json={"name": "shop", "index_type": "AUTO"}).json()["index_type"]
            == "FLAT"
        )
        job = c.post("/img/load", json={"dataset": "ds", "split": "valid", "collection": "shop"}).json()
        assert wait(c, job["id"])["state"] == "succeeded"
        assert c.get("/img/collections/shop").json()["auto_index"]["reindex_due"] is True
        before = svc.vectors.get_vectors("shop", list(range(1, N_IMAGES + 1)))
        job = wait(c, c.post("/img/collections/shop/rebuild", json={"switch": True}).json()["id"])
        assert job["state"] == "succeeded", job["message"]
        assert "copied, same model" in job["message"]
        got = c.get("/img/collections/shop").json()
        assert got["index_type"] == "HNSW" and got["auto_index"]["reindex_due"] is False
        assert got["physical"] == "shop__v2" and got["vectors"] == N_IMAGES
        after = svc.vectors.get_vectors("shop", list(range(1, N_IMAGES + 1)))
        assert all(np.array_equal(before[i], after[i]) for i in before)
        # An explicit index: back to FLAT, as a third version.
        r = c.post("/img/collections/shop/rebuild", json={"index_type": "FLAT", "switch": True})
        assert wait(c, r.json()["id"])["state"] == "succeeded"
        assert c.get("/img/collections/shop").json()["index_type"] == "FLAT"
        assert c.get("/img/collections/shop").json()["physical"] == "shop__v3"


def test_rebuild_catches_up_adds_and_deletes_made_meanwhile(stack):
    """sync() is what the job and the switch run: what changed in the source after a pass is
    applied by the next one."""
    from operations.progress import Counter
    from operations.rebuild import rebuild_params, run_rebuild, sync

    c = stack
    svc = c.services
    params = rebuild_params(svc, "shop", "tiny-b")
    run_rebuild(svc, "shop", params, Counter())
    assert svc.images.count(StoreName("shop__v2")) == N_IMAGES
    added = c.post("/img/images/shop", files={"files": ("n.jpg", jpeg(777), "image/jpeg")}).json()
    new_id = added["results"][0]["id"]
    assert c.post("/img/images/shop/delete", json={"ids": [3, 4]}).json()["deleted"] == 2
    counts = sync(svc, StoreName("shop"), StoreName("shop__v2"), same_model=False)
    assert (counts.copied, counts.deleted, counts.vectors) == (1, 2, 1)
    assert svc.vectors.existing_ids(StoreName("shop__v2"), [new_id, 3, 4]) == {new_id}
    assert sorted(svc.images.get_rows(StoreName("shop__v2"), [new_id, 3, 4])) == [new_id]
    again = sync(svc, StoreName("shop"), StoreName("shop__v2"), same_model=False)
    assert (again.copied, again.deleted, again.vectors) == (0, 0, 0)


def test_an_index_rebuild_encodes_a_row_whose_vector_the_source_lacks(stack):
    """An add cut off by a switch's fence between its rows and its vectors leaves rows without a
    vector; an index-only rebuild (vectors copied) encodes those from their stored images."""
    from operations.progress import Counter
    from operations.rebuild import rebuild_params, run_rebuild

    c = stack
    svc = c.services
    added = c.post("/img/images/shop", files={"files": ("n.jpg", jpeg(778), "image/jpeg")}).json()
    new_id = added["results"][0]["id"]
    svc.vectors.delete(StoreName("shop"), [new_id])
    message = run_rebuild(svc, "shop", rebuild_params(svc, "shop"), Counter())
    assert "copied, same model" in message and "failed 0" in message, message
    target = StoreName("shop__v2")
    assert svc.vectors.existing_ids(target, [new_id]) == {new_id}
    assert svc.images.indexed_ids(target, [new_id]) == {new_id}
    hit = svc.vectors.search(
        target,
        svc.encoder.encode_images(
            [
                decode_b64_image(
                    svc.images.get_rows(target, [new_id], with_image=True)[new_id].image_b64 or "", 10**8
                )
            ]
        ),
        1,
    )[0][0]
    assert hit.id == new_id


def test_a_write_during_the_switch_fence_is_refused_with_retry_after_then_lands(stack):
    c = stack
    svc = c.services
    svc.aliases.store.fence("shop", "shop", 30)
    r = c.post("/img/images/shop", files={"files": ("n.jpg", jpeg(4242), "image/jpeg")})
    assert r.status_code == 503 and r.headers.get("Retry-After") == "2"
    assert "switching" in r.json()["error"]["message"]
    assert _search(c)["model"] == "tiny"  # reads go on
    svc.aliases.store.unfence("shop")
    r = c.post("/img/images/shop", files={"files": ("n.jpg", jpeg(4242), "image/jpeg")})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "added"


def test_faults_fail_the_job_clearly_and_switch_nothing(stack, monkeypatch):
    c = stack
    svc = c.services
    inner = svc.vectors.inner

    def down(*args, **kwargs):
        raise DependencyUnavailable("milvus", "connection refused (injected)")

    monkeypatch.setattr(inner, "upsert", down)
    job = wait(
        c, c.post("/img/collections/shop/rebuild", json={"model": "tiny-b", "switch": True}).json()["id"]
    )
    assert job["state"] == "failed" and job["message"] == "milvus unavailable: connection refused (injected)"
    monkeypatch.undo()
    assert _search(c)["model"] == "tiny"
    assert c.get("/img/collections/shop").json()["alias_of"] is None
    # A fault in the switch itself (the Milvus alias step): nothing switched, writes resume.
    monkeypatch.setattr(inner, "point_alias", down)
    job = wait(
        c, c.post("/img/collections/shop/rebuild", json={"model": "tiny-b", "switch": True}).json()["id"]
    )
    assert job["state"] == "failed" and "milvus unavailable" in job["message"]
    monkeypatch.undo()
    assert _search(c)["model"] == "tiny"
    r = c.post("/img/images/shop", files={"files": ("n.jpg", jpeg(5151), "image/jpeg")})
    assert r.status_code == 200, r.text

    # SQL failing: in the copy (the job fails with SQL's message), and in the switch's update.
    def sql_down(*args, **kwargs):
        raise DependencyUnavailable("sqlite", "database is locked (injected)")

    monkeypatch.setattr(svc.images.inner, "copy_rows", sql_down)
    failed = wait(c, c.post(f"/img/jobs/{job['id']}/resume").json()["id"])
    assert (
        failed["state"] == "failed"
        and failed["message"] == "sqlite unavailable: database is locked (injected)"
    )
    monkeypatch.undo()
    monkeypatch.setattr(svc.aliases.store, "switch", sql_down)
    failed = wait(c, c.post(f"/img/jobs/{job['id']}/resume").json()["id"])
    assert failed["state"] == "failed" and "database is locked" in failed["message"]
    monkeypatch.undo()
    assert _search(c)["model"] == "tiny" and not svc.aliases.rows(fresh=True)["shop"].fenced
    # The half-built version was resumed by a later rebuild of the same target.
    job = wait(c, c.post(f"/img/jobs/{job['id']}/resume").json()["id"])
    assert job["state"] == "succeeded" and "switched" in job["message"]
    assert _search(c)["model"] == "tiny-b"


def test_bad_requests(stack):
    c = stack
    assert c.post("/img/collections/nope/rebuild", json={}).status_code == 404
    assert c.post("/img/collections/shop/rebuild", json={"model": "unknown"}).status_code == 409
    assert c.post("/img/collections/shop/rebuild", json={"min_recall": 0.5}).status_code == 422
    assert c.post("/img/collections/shop/rebuild", json={"dataset": "ds"}).status_code == 422
    assert c.post("/img/collections/shop/rebuild", json={"index_params": {"M": 8}}).status_code == 422
    assert c.post("/img/collections/bad;name/rebuild", json={}).status_code == 400
    assert c.post("/img/collections/shop/switch", json={"to": "shop"}).status_code == 422


def test_a_write_pinned_before_a_switch_fails_instead_of_landing_in_the_old_version(stack):
    """An add resolves the name once (its encoder and writes agree); if the name switches while
    it runs, its next write is refused (503, the client retries) rather than stored in the
    version whose last rows were already copied."""
    from operations.domain import ImageRow
    from operations.progress import Counter
    from operations.rebuild import rebuild_params, run_rebuild

    c = stack
    svc = c.services
    pinned = svc.store_name("shop", write=True)
    assert pinned == "shop" and pinned.alias == "shop"
    run_rebuild(svc, "shop", {**rebuild_params(svc, "shop", "tiny-b"), "switch": True}, Counter())
    row = ImageRow(id=None, sha256="ab" * 32, image_b64=_b64(jpeg(31337)))
    with pytest.raises(DependencyUnavailable) as err:
        svc.images.insert_new(pinned, row)
    assert err.value.retry_after_s == 2
    assert svc.images.find_by_sha(StoreName("shop"), "ab" * 32) is None
    # Resolved afresh, the same write goes to the new version.
    new_id, created = svc.images.insert_new("shop", row)
    assert created and svc.images.find_by_sha(StoreName("shop__v2"), "ab" * 32) == new_id


def test_the_version_a_rebuild_writes_cannot_be_dropped_under_it(stack, monkeypatch):
    import operations.rebuild as rebuild

    c = stack
    started, release = __import__("threading").Event(), __import__("threading").Event()
    real = rebuild.sync

    def slow(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(rebuild, "sync", slow)
    job = c.post("/img/collections/shop/rebuild", json={"model": "tiny-b"}).json()
    assert started.wait(30)
    r = c.delete("/img/collections/shop__v2")
    assert r.status_code == 409 and job["id"] in r.json()["error"]["message"]
    assert c.delete("/img/collections/shop").status_code == 409  # jobs run on it
    release.set()
    assert wait(c, job["id"])["state"] == "succeeded"


def test_the_command_line_rebuilds_and_switches(tmp_path, monkeypatch, capsys):
    import json

    from scripts import cli

    _split(tmp_path)
    env = {
        "MODEL_NAME": "tiny",
        "MODEL_ARCH": str(TINY_ARCH),
        "MODEL_RANDOM_INIT": "true",
        "EXTRA_MODELS": json.dumps({"tiny-b": TINY_B}),
        "MILVUS_URI": str(tmp_path / "milvus.db"),
        "SQLITE_PATH": str(tmp_path / "images.sqlite3"),
        "DEVICE": "cpu",
        "ENCODER_BACKEND": "torch",
        "REBUILD_SWITCH_GRACE_S": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no .env of the repository is read
    ds = str(tmp_path / "data" / "ds")
    assert cli.main(["load", "--dataset", ds, "--split", "valid", "--collection", "shop"]) == 0
    capsys.readouterr()
    args = ["rebuild", "shop", "--model", "tiny-b", "--dataset", ds, "--split", "valid", "--switch"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "built shop__v2 (tiny-b, FLAT)" in out and "switched 'shop' from shop__v1 to shop__v2" in out
    assert cli.main(["list"]) == 0
    listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["shop"]["alias_of"] == "shop__v2" and listed["shop"]["model"] == "tiny-b"
    assert cli.main(["switch", "shop", "shop__v1"]) == 0
    assert json.loads(capsys.readouterr().out)["to"] == "shop__v1"
    assert cli.main(["switch", "shop", "elsewhere"]) == 2


def test_a_rebuild_keeps_the_time_partitions_and_the_rows_periods(tmp_path):
    settings = make_settings(tmp_path, extra_models={"tiny-b": TINY_B}, rebuild_switch_grace_s=0)
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:
        r = c.post("/img/collections", json={"name": "hist", "time_partitions": "month"})
        assert r.status_code == 201, r.text
        for seed, when in ((1, 1_700_000_000), (2, 1_710_000_000)):  # Nov 2023, Mar 2024
            r = c.post(
                "/img/images/hist",
                files={"files": ("a.jpg", jpeg(seed), "image/jpeg")},
                data={"created_at": str(when)},
            )
            assert r.status_code == 200, r.text
        job = c.post("/img/collections/hist/rebuild", json={"model": "tiny-b", "switch": True}).json()
        assert wait(c, job["id"])["state"] == "succeeded"
        got = c.get("/img/collections/hist").json()
        assert got["time_partitions"] == "month" and got["physical"] == "hist__v2" and got["vectors"] == 2
        periods = sorted(svc.vectors.time_partitions("hist__v1"))
        assert {"t2023_11", "t2024_03"} <= set(periods)
        assert sorted(svc.vectors.time_partitions("hist")) == periods


def test_a_version_name_cannot_be_made_by_hand(tmp_path):
    """Names ending in __v<number> are a rebuild's versions: creating one by hand is a 422
    (it would be taken for a version, and a re-create of a real one meets the switch's fence)."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.stack import make_services, make_settings

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, make_services(settings))) as c:
        for name in ("products__v2", "a__v10"):
            r = c.post("/img/collections", json={"name": name})
            assert r.status_code == 422 and "rebuild" in r.json()["error"]["message"], r.text
        for name in ("products__v", "products_v2", "products__version"):
            assert c.post("/img/collections", json={"name": name}).status_code == 201, name
