"""End to end through HTTP on both backend pairs: load, search, add, delete, filters, scan, errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.stack import exact_top_k, jpeg, tiny_encoder, unique, wait_job, write_dataset

N = 120


@pytest.fixture(scope="module")
def client(module_client):
    return module_client


@pytest.fixture(scope="module")
def loaded(client):
    """A split of N images with precomputed features, loaded through the API (once per backend)."""
    settings = client.services.settings
    collection = unique("api")
    ids, feats = write_dataset(settings.data_root / "ds", "valid", N, tiny_encoder().dim, seed=5)
    r = client.post("/img/load", json={"dataset": "ds", "split": "valid", "collection": collection})
    assert r.status_code == 202, r.text
    assert r.json()["job_id"] == r.json()["id"]  # named job_id, as by the add endpoints
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert (job["processed"], job["failed"], job["total"]) == (N, 0, N)
    return collection, ids, feats


def test_text_search_equals_exact_knn_over_the_same_features(client, loaded):
    collection, ids, feats = loaded
    for query in ["左边有一个红色的圆形", "蓝色的三角形在右边", "两只猫"]:
        r = client.post("/img/search", json={"query": query, "top_k": 10, "collection": collection})
        assert r.status_code == 200, r.text
        body = r.json()
        qvec = tiny_encoder().encode_texts([query])[0]
        assert [x["id"] for x in body["results"]] == exact_top_k(qvec, ids, feats, 10)
        assert [x["rank"] for x in body["results"]] == list(range(1, 11))
        np.testing.assert_allclose(
            [x["score"] for x in body["results"]],
            sorted((feats @ qvec).tolist(), reverse=True)[:10],
            atol=1e-4,
        )
        assert body["model"] == "tiny"
        assert set(body["timings_ms"]) >= {"encode", "vector_search", "image_fetch", "total"}


def test_result_urls_serve_the_original_bytes_and_thumbnails(client, loaded):
    collection, ids, _ = loaded
    r = client.post(
        "/img/search", json={"query": "红色", "top_k": 3, "collection": collection, "with_image": True}
    )
    first = r.json()["results"][0]
    original = client.get(first["url"])
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    assert original.content == jpeg(5 * 100_000 + first["id"])
    import base64

    assert base64.b64decode(first["image_b64"]) == original.content
    thumb = client.get(first["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    meta = client.get(first["url"] + "/meta").json()
    assert meta["id"] == first["id"] and meta["indexed"] is True


def test_loading_the_same_split_twice_keeps_one_copy(client, loaded):
    collection, _, _ = loaded
    r = client.post("/img/load", json={"dataset": "ds", "split": "valid", "collection": collection})
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded" and job["processed"] == N
    counts = client.get(f"/img/collections/{collection}/count").json()
    assert counts == {"collection": collection, "vectors": N, "images": N}


def test_bad_records_are_reported_with_line_numbers_and_the_rest_loads(client):
    settings = client.services.settings
    d = settings.data_root / "bad"
    write_dataset(d, "test", 20, tiny_encoder().dim, seed=9)
    tsv = (d / "test_imgs.tsv").read_text().splitlines()
    tsv[3] = "4\tnot base64 at all!!"
    tsv[6] = "seven\t" + tsv[6].split("\t")[1]
    (d / "test_imgs.tsv").write_text("\n".join(tsv) + "\n")
    feats = (d / "test_imgs.img_feat.jsonl").read_text().splitlines()
    feats[10] = json.dumps({"image_id": 11, "feature": [0.1] * 5})
    feats[12] = '{"image_id": 13, "feature": [0.1, '
    (d / "test_imgs.img_feat.jsonl").write_text("\n".join(feats) + "\n")
    collection = unique("bad")
    job = wait_job(
        client,
        client.post("/img/load", json={"dataset": "bad", "split": "test", "collection": collection}).json()[
            "id"
        ],
    )
    assert job["state"] == "succeeded"
    assert job["processed"] == 16 and job["failed"] == 4, job
    items = " | ".join(f["item"] + ": " + f["reason"] for f in job["failures"])
    assert "line 4" in items and "line 7" in items and "line 11" in items and "line 13" in items
    assert client.get(f"/img/collections/{collection}/count").json()["images"] == 16


def test_image_search_by_upload_and_by_stored_id(client, loaded):
    collection, ids, _ = loaded
    stored = client.post(
        "/img/search/image", data={"image_id": str(ids[0]), "collection": collection, "top_k": "5"}
    )
    assert stored.status_code == 200, stored.text
    assert ids[0] not in [x["id"] for x in stored.json()["results"]]
    assert len(stored.json()["results"]) == 5
    photo = jpeg(777)
    up = client.post(
        "/img/search/image",
        files={"file": ("q.jpg", photo, "image/jpeg")},
        data={"collection": collection, "top_k": "4"},
    )
    assert up.status_code == 200 and len(up.json()["results"]) == 4
    qvec = tiny_encoder().encode_images([Image.open(io.BytesIO(photo)).convert("RGB")])[0]
    assert up.json()["results"][0]["score"] == pytest.approx(
        float(
            np.max(client.services.vectors.get_vectors(collection, ids)[up.json()["results"][0]["id"]] @ qvec)
        ),
        abs=1e-4,
    )


def test_add_dedupe_filter_delete_round_trip(client, loaded):
    collection, ids, _ = loaded
    files = [
        ("files", ("a.jpg", jpeg(9001), "image/jpeg")),
        ("files", ("b.jpg", jpeg(9002), "image/jpeg")),
        ("files", ("a-again.jpg", jpeg(9001), "image/jpeg")),
        ("files", ("x.txt", b"hello", "text/plain")),
    ]
    r = client.post(
        f"/img/images/{collection}",
        files=files,
        data={"source": "shop", "tags": "sale,红色", "created_at": "1800000000"},
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["status"] for x in res] == ["added", "added", "present", "failed"]
    assert res[2]["id"] == res[0]["id"] and "not an image" in res[3]["error"]
    new_ids = {res[0]["id"], res[1]["id"]}
    flt = {"sources": ["shop"]}
    found = client.post(
        "/img/search", json={"query": "红色", "top_k": 50, "collection": collection, "filters": flt}
    ).json()["results"]
    assert {x["id"] for x in found} == new_ids
    found = client.post(
        "/img/search",
        json={
            "query": "红色",
            "top_k": 50,
            "collection": collection,
            "filters": {"tags": ["红色"], "created_from": 1799999999},
        },
    ).json()
    assert {x["id"] for x in found["results"]} == new_ids
    assert client.delete(f"/img/images/{collection}/{res[0]['id']}").status_code == 200
    found = client.post(
        "/img/search", json={"query": "红色", "top_k": 50, "collection": collection, "filters": flt}
    ).json()["results"]
    assert {x["id"] for x in found} == {res[1]["id"]}
    assert client.get(f"/img/images/{collection}/{res[0]['id']}").status_code == 404
    r = client.post(f"/img/images/{collection}/delete", json={"filters": flt})
    assert r.json()["deleted"] == 1
    counts = client.get(f"/img/collections/{collection}/count").json()
    assert counts["images"] == counts["vectors"] == N


def test_min_score_and_scan(client, loaded):
    collection, ids, feats = loaded
    descriptions = ["红色的圆形", "黑色的星形"]
    qv = tiny_encoder().encode_texts(descriptions)
    # Halfway between the first text's 8th and 9th best scores, with no score of either text
    # near it: the server's scores (its own encoder backend, Milvus' SIMD) differ from these in
    # the last bits, so a threshold equal to a score would flip that image by machine.
    scores_by_text = feats @ qv.T
    best = np.sort(scores_by_text[:, 0])
    threshold = float((best[-8] + best[-9]) / 2)
    assert np.abs(scores_by_text - threshold).min() > 1e-4, "the fixture's scores crowd the threshold"
    r = client.post(
        "/img/scan",
        json={"descriptions": descriptions, "threshold": threshold, "collection": collection, "limit": 1000},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    want = {(int(ids[i]), d) for d in range(2) for i in np.flatnonzero(scores_by_text[:, d] >= threshold)}
    assert {(h["image_id"], h["description_index"]) for h in body["hits"]} == want
    assert body["total"] == len(want)
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    page = client.post(
        "/img/scan",
        json={
            "descriptions": descriptions,
            "threshold": threshold,
            "collection": collection,
            "offset": 2,
            "limit": 3,
        },
    ).json()
    assert [h["image_id"] for h in page["hits"]] == [h["image_id"] for h in body["hits"][2:5]]
    export = client.post(
        "/img/scan",
        json={
            "descriptions": descriptions,
            "threshold": threshold,
            "collection": collection,
            "format": "csv",
        },
    )
    csv_text = export.text
    assert (
        csv_text.splitlines()[0].startswith("image_id,score") and len(csv_text.splitlines()) == len(want) + 1
    )
    # Without a limit an export is every match, streamed: no total is known up front.
    assert export.headers["X-Offset"] == "0" and "X-Total-Count" not in export.headers
    # A partial export says so: its page bounds and the total travel as headers.
    part = client.post(
        "/img/scan",
        json={
            "descriptions": descriptions,
            "threshold": threshold,
            "collection": collection,
            "format": "jsonl",
            "limit": 2,
        },
    )
    assert len(part.text.splitlines()) == 2 and part.headers["X-Total-Count"] == str(len(want))
    assert part.headers["X-Next-Offset"] == "2" and "X-Next-Offset" not in export.headers
    assert (
        client.post(
            "/img/scan", json={"descriptions": descriptions, "threshold": threshold, "collection": collection}
        ).json()["limit"]
        == 100
    )
    jsonl = client.post(
        "/img/scan",
        json={
            "descriptions": descriptions,
            "threshold": threshold,
            "collection": collection,
            "format": "jsonl",
        },
    ).text
    assert len(jsonl.splitlines()) == len(want)
    r = client.post(
        "/img/search",
        json={"query": descriptions[0], "top_k": 100, "collection": collection, "min_score": threshold},
    )
    assert {x["id"] for x in r.json()["results"]} == {i for i, d in want if d == 0}


def _chunks(total: int):
    piece = b" " * (1 << 20)
    for _ in range(total // len(piece) + 1):
        yield piece


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    "case",
    [
        "not_image",
        "truncated",
        "too_many_bytes",
        "too_many_pixels",
        "empty_query",
        "top_k",
        "long_query",
        "bad_filter",
        "bad_collection_name",
        "unknown_collection",
        "unknown_image",
        "path_escape",
        "extra_field",
        "bad_upload_in_batch",
        "unknown_endpoint",
        "wrong_method",
        "chunked_body_over_limit",
    ],
)
def test_bad_input_gets_a_clear_error_and_changes_nothing(client, loaded, case):
    collection, ids, _ = loaded
    settings = client.services.settings
    full = jpeg(31337, size=96)

    def search(**body):
        return client.post("/img/search", json={"collection": collection, "query": "红色", **body})

    def image_search(name: str, data: bytes, mime: str = "image/jpeg"):
        return client.post(
            "/img/search/image", files={"file": (name, data, mime)}, data={"collection": collection}
        )

    requests = {
        "not_image": (415, lambda: image_search("a.jpg", b"%PDF-1.4 not an image")),
        "truncated": (422, lambda: image_search("a.jpg", full[: len(full) // 2])),
        "too_many_bytes": (
            413,
            lambda: image_search("a.jpg", b"\xff" * (settings.max_upload_bytes + 2 * 1024 * 1024)),
        ),
        "too_many_pixels": (413, lambda: image_search("a.png", _png(8000, 6000), "image/png")),
        "empty_query": (422, lambda: search(query="")),
        "top_k": (422, lambda: search(top_k=0)),
        "long_query": (422, lambda: search(query="很长的句子" * 20)),
        "bad_filter": (422, lambda: search(filters={"sources": ['a" or id > 0 or "']})),
        "bad_collection_name": (400, lambda: search(collection="x;drop")),
        "unknown_collection": (404, lambda: search(collection=unique("nope"))),
        "unknown_image": (404, lambda: client.get(f"/img/images/{collection}/987654321")),
        "path_escape": (
            400,
            lambda: client.post(
                "/img/load", json={"dataset": "../../etc", "split": "valid", "collection": collection}
            ),
        ),
        "extra_field": (422, lambda: search(unexpected=1)),
        "bad_upload_in_batch": (
            413,
            lambda: client.post(
                f"/img/images/{collection}",
                files=[
                    ("files", ("ok.jpg", jpeg(555), "image/jpeg")),
                    ("files", ("huge.jpg", b"\xff" * (settings.max_upload_bytes + 1), "image/jpeg")),
                ],
            ),
        ),
        "unknown_endpoint": (404, lambda: client.post("/img/serch", json={"query": "红色"})),
        "wrong_method": (405, lambda: client.put("/img/search", json={"query": "红色"})),
        # No Content-Length: the limit is found while the body streams in.
        "chunked_body_over_limit": (
            413,
            lambda: client.post(
                "/img/search", content=_chunks(9 << 20), headers={"content-type": "application/json"}
            ),
        ),
    }
    before = client.get(f"/img/collections/{collection}/count").json()
    expected, send = requests[case]
    response = send()
    assert response.status_code == expected, response.text
    err = response.json()["error"]
    assert err["code"] and err["message"] and isinstance(err["details"], dict)  # one shape for every error
    # The service still answers and nothing was stored or lost.
    assert client.get("/healthz").status_code == 200
    assert client.get(f"/img/collections/{collection}/count").json() == before
    assert search(top_k=3).status_code == 200


def test_writes_need_the_api_key_when_configured(client):
    collection = unique("key")
    assert client.post("/img/collections", json={"name": collection}).status_code == 201
    added = client.post(
        f"/img/images/{collection}", files={"files": ("k.jpg", jpeg(4242), "image/jpeg")}
    ).json()
    image_id = added["results"][0]["id"]
    client.services.settings.api_key = "s3cret"
    try:
        assert client.delete(f"/img/images/{collection}/{image_id}").status_code == 401
        assert (
            client.delete(f"/img/collections/{collection}", headers={"X-API-Key": "wrong"}).status_code == 401
        )
        assert client.post("/img/load", json={"dataset": "ds", "split": "valid"}).status_code == 401
        ok = client.delete(f"/img/images/{collection}/{image_id}", headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert client.post("/img/search", json={"query": "红色", "collection": collection}).status_code == 200
        assert (
            client.delete(f"/img/collections/{collection}", headers={"X-API-Key": "s3cret"}).status_code
            == 200
        )
    finally:
        client.services.settings.api_key = ""


def test_collections_with_chosen_index_and_drop(client):
    name = unique("hnsw")
    r = client.post(
        "/img/collections",
        json={
            "name": name,
            "index_type": "HNSW",
            "index_params": {"M": 8, "efConstruction": 64},
            "search_params": {"ef": 32},
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["index_type"] == "HNSW" and r.json()["dim"] == tiny_encoder().dim
    bad = client.post(
        "/img/collections", json={"name": unique("x"), "index_type": "HNSW", "index_params": {"nlist": 8}}
    )
    assert bad.status_code == 422
    assert name in [c["name"] for c in client.get("/img/collections").json()]
    assert client.delete(f"/img/collections/{name}").status_code == 200
    assert client.get(f"/img/collections/{name}").status_code == 404


def test_an_ivf_sq8_collection_is_made_described_and_searched(client):
    """IVF_SQ8 (8-bit codes: the index for RAM) through the API: made with its IVF parameters,
    described as made, an added image found by its own bytes; HNSW's parameters refused."""
    name = unique("sq8")
    r = client.post(
        "/img/collections",
        json={
            "name": name,
            "index_type": "IVF_SQ8",
            "index_params": {"nlist": 8},
            "search_params": {"nprobe": 8},
        },
    )
    assert r.status_code == 201, r.text
    described = client.get(f"/img/collections/{name}").json()
    assert (described["index_type"], described["index_params"], described["search_params"]) == (
        "IVF_SQ8",
        {"nlist": 8},
        {"nprobe": 8},
    )
    files = [("files", (f"{i}.jpg", jpeg(600 + i), "image/jpeg")) for i in range(6)]
    added = client.post(f"/img/images/{name}", files=files)
    assert added.status_code == 200, added.text
    ids = [a["id"] for a in added.json()["results"]]
    query = {"file": ("q.jpg", jpeg(603), "image/jpeg")}
    found = client.post("/img/search/image", data={"collection": name, "top_k": "1"}, files=query)
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["id"] == ids[3]
    hnsw_params = {"name": unique("x"), "index_type": "IVF_SQ8", "search_params": {"ef": 8}}
    bad = client.post("/img/collections", json=hnsw_params)
    assert bad.status_code == 422
    assert client.delete(f"/img/collections/{name}").status_code == 200


def test_collection_partitioned_by_source(client):
    """Created through the API with a partition key on source: adds land in it,
    and source filters give exactly that source's images."""
    name = unique("part")
    r = client.post("/img/collections", json={"name": name, "source_partitions": 16})
    assert r.status_code == 201, r.text
    assert r.json()["source_partitions"] == 16
    assert (
        client.post("/img/collections", json={"name": unique("x"), "source_partitions": 5000}).status_code
        == 422
    )
    added = {}
    for source, seeds in (("商城", (31, 32, 33)), ("news", (41, 42)), ("risk", (51,))):
        files = [("files", (f"{s}.jpg", jpeg(s), "image/jpeg")) for s in seeds]
        res = client.post(f"/img/images/{name}", files=files, data={"source": source}).json()["results"]
        assert [x["status"] for x in res] == ["added"] * len(seeds), res
        added[source] = {x["id"] for x in res}
    for sources in (["商城"], ["news", "risk"]):
        found = client.post(
            "/img/search",
            json={"query": "红色", "top_k": 50, "collection": name, "filters": {"sources": sources}},
        ).json()["results"]
        assert {x["id"] for x in found} == set().union(*(added[s] for s in sources))
    assert (
        client.post("/img/search", json={"query": "红色", "top_k": 50, "collection": name})
        .json()["results"]
        .__len__()
        == 6
    )
    listed = next(c for c in client.get("/img/collections").json() if c["name"] == name)
    assert (listed["source_partitions"], listed["images"], listed["vectors"]) == (16, 6, 6)
    assert client.delete(f"/img/collections/{name}").status_code == 200


def test_tag_filters_on_lite_are_resolved_in_sql(client, monkeypatch):
    """On Milvus Lite a search with tags asks SQL for the matching ids and searches
    those (Lite evaluates array filters row by row); the answers are the same
    as the server's own tag filter gives."""
    name = unique("tags")
    assert client.post("/img/collections", json={"name": name}).status_code == 201
    added = {}
    for tag, seeds in (("红色", (61, 62)), ("蓝色", (63,))):
        files = [("files", (f"{s}.jpg", jpeg(s), "image/jpeg")) for s in seeds]
        res = client.post(f"/img/images/{name}", files=files, data={"tags": f"{tag},x_y"}).json()["results"]
        added[tag] = {x["id"] for x in res}
    vectors = client.services.vectors
    seen = []
    real_search, real_range = vectors.search, vectors.range_search
    monkeypatch.setattr(
        vectors, "search", lambda c, v, k, flt=None: seen.append(flt) or real_search(c, v, k, flt)
    )
    monkeypatch.setattr(
        vectors,
        "range_search",
        lambda c, v, s, n, flt=None, *more: seen.append(flt) or real_range(c, v, s, n, flt, *more),
    )

    def search(tags):
        r = client.post(
            "/img/search", json={"query": "红色", "top_k": 10, "collection": name, "filters": {"tags": tags}}
        )
        assert r.status_code == 200, r.text
        return {x["id"] for x in r.json()["results"]}

    assert search(["红色"]) == added["红色"]
    assert search(["蓝色", "红色"]) == added["红色"] | added["蓝色"]
    assert search(["x_y"]) == added["红色"] | added["蓝色"]
    scan = client.post(
        "/img/scan",
        json={"descriptions": ["红色"], "threshold": -1.0, "collection": name, "filters": {"tags": ["蓝色"]}},
    ).json()
    assert {h["image_id"] for h in scan["hits"]} == added["蓝色"]
    if vectors.slow_array_filters:
        assert all(f.tags == () and f.only_ids for f in seen), seen
        seen.clear()
        assert search(["没有"]) == set()
        assert seen == []  # nothing matches in SQL: Milvus is not asked
    else:
        assert all(f.tags and f.only_ids is None for f in seen), seen
    assert client.delete(f"/img/collections/{name}").status_code == 200


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["milvus"] == "ok"


def test_concurrent_searches_give_the_sequential_answers(client, loaded):
    from concurrent.futures import ThreadPoolExecutor

    collection, _, _ = loaded
    queries = ["红色的圆形", "蓝色的正方形在右边", "黄色的星形", "两个绿色的三角形"] * 4

    def ids(q):
        r = client.post("/img/search", json={"query": q, "top_k": 5, "collection": collection})
        assert r.status_code == 200
        return [x["id"] for x in r.json()["results"]]

    sequential = [ids(q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ids, queries)) == sequential


def test_the_same_image_uploaded_at_the_same_moment_is_stored_once(client, loaded):
    import threading

    collection, _, _ = loaded
    before = client.get(f"/img/collections/{collection}/count").json()
    data, results, barrier = jpeg(60606), [], threading.Barrier(6)

    def upload():
        barrier.wait()
        r = client.post(f"/img/images/{collection}", files={"files": ("same.jpg", data, "image/jpeg")})
        results.append(r.json()["results"][0])

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["status"] for r in results) == ["added"] + ["present"] * 5
    assert len({r["id"] for r in results}) == 1
    after = client.get(f"/img/collections/{collection}/count").json()
    assert after["images"] == after["vectors"] == before["images"] + 1
    assert client.delete(f"/img/images/{collection}/{results[0]['id']}").status_code == 200


def test_folder_under_the_data_root_is_added_as_a_job(client):
    settings = client.services.settings
    collection = unique("folder")
    assert client.post("/img/collections", json={"name": collection}).status_code == 201
    folder = settings.data_root / "incoming" / collection
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / ("sub" if i else "") / f"p{i}.jpg").write_bytes(jpeg(8800 + i))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image, not even looked at")
    r = client.post(
        f"/img/images/{collection}/folder",
        json={"folder": f"incoming/{collection}", "source": "camera", "tags": ["2026"]},
    )
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert (job["state"], job["processed"], job["failed"], job["total"]) == ("succeeded", 3, 1, 4), job
    assert job["failures"][0]["item"] == "broken.jpg"
    found = client.post(
        "/img/search",
        json={
            "query": "照片",
            "collection": collection,
            "filters": {"sources": ["camera"], "tags": ["2026"]},
        },
    ).json()
    assert len(found["results"]) == 3
    again = wait_job(
        client,
        client.post(f"/img/images/{collection}/folder", json={"folder": f"incoming/{collection}"}).json()[
            "job_id"
        ],
    )
    assert again["processed"] == 3 and "already present 3" in again["message"]
    assert client.get(f"/img/collections/{collection}/count").json()["images"] == 3
    assert client.post(f"/img/images/{collection}/folder", json={"folder": "../.."}).status_code == 400


def test_a_features_file_of_another_model_is_refused_at_once(client):
    settings = client.services.settings
    write_dataset(settings.data_root / "other_dim", "valid", 5, tiny_encoder().dim * 2, seed=1)
    collection = unique("dim")
    job = wait_job(
        client,
        client.post(
            "/img/load", json={"dataset": "other_dim", "split": "valid", "collection": collection}
        ).json()["id"],
    )
    assert job["state"] == "failed" and "64-d features" in job["message"], job
    assert job["processed"] == 0
