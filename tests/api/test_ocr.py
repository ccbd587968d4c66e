"""Text in images (OCR) through HTTP on both backend pairs (Milvus Lite + SQLite, Milvus server +
MariaDB), with real RapidOCR on images that carry rendered Chinese text.

Every image through the whole pipeline is read by the OCR model (about half a second each on
2 cores), so the module carries the `services` marker; the fast loop reads images with real
RapidOCR through the operations in test_ocr_paths.py.
"""

from __future__ import annotations

import pytest

from datasets.text_images import TEXT_IMAGES, text_image_jpeg
from tests.stack import jpeg, unique, wait_job

pytestmark = pytest.mark.services

SPECS = {s.name: s for s in TEXT_IMAGES}
OCR_NAMES = ("price_tag_apple", "price_tag_tea", "phone_ad", "shop_sign")


def add(client, collection: str, named: list[tuple[str, bytes]], tags: str | None = None) -> list[dict]:
    files = [("files", (f"{name}.jpg", data, "image/jpeg")) for name, data in named]
    r = client.post(f"/img/images/{collection}", files=files, data={"tags": tags} if tags else {})
    assert r.status_code == 200, r.text
    return r.json()["results"]


@pytest.fixture(scope="module")
def client(module_client):
    return module_client


@pytest.fixture(scope="module")
def ocr_collection(client):
    """A collection created with OCR on, holding 4 text images and 2 plain ones (ids by name)."""
    collection = unique("ocr")
    r = client.post("/img/collections", json={"name": collection, "ocr": True})
    assert r.status_code == 201, r.text
    assert r.json()["ocr"] is True
    named = [(n, text_image_jpeg(SPECS[n], seed=i)) for i, n in enumerate(OCR_NAMES)]
    named += [("plain1", jpeg(1)), ("plain2", jpeg(2))]
    results = add(client, collection, named, tags="shop")
    assert [r["status"] for r in results] == ["added"] * 6
    return collection, {r["filename"][:-4]: r for r in results}


def test_add_reads_the_text_of_each_image(ocr_collection):
    _, results = ocr_collection
    for name in OCR_NAMES:
        ocr = results[name]["ocr"]
        assert ocr["status"] == "ok" and ocr["error"] is None, ocr
        assert ocr["lines"] >= 1
    assert "13812345678" in results["phone_ad"]["ocr"]["text"]
    assert "面馆" in results["shop_sign"]["ocr"]["text"]
    assert results["plain1"]["ocr"]["status"] == "ok"  # read, no text: still ok


@pytest.mark.parametrize(
    "query,name",
    [
        ("13812345678", "phone_ad"),
        ("苹果", "price_tag_apple"),
        ("龙井", "price_tag_tea"),
        ("老王面馆", "shop_sign"),
    ],
)
def test_text_mode_finds_cjk_and_digit_substrings(client, ocr_collection, query, name):
    collection, results = ocr_collection
    r = client.post("/img/search", json={"query": query, "collection": collection, "mode": "text"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert [h["id"] for h in hits] == [results[name]["id"]]
    assert hits[0]["signals"] == ["text"]
    assert query in hits[0]["ocr_text"].replace(" ", "")
    assert -1.0 <= hits[0]["score"] <= 1.0  # still the cosine, from the stored vector


def test_text_mode_with_no_match_and_a_non_substring(client, ocr_collection):
    collection, _ = ocr_collection
    for query in ("香蕉", "苹面"):  # 苹 and 面 both occur, never adjacent
        r = client.post("/img/search", json={"query": query, "collection": collection, "mode": "text"})
        assert r.status_code == 200 and r.json()["results"] == [], r.text


def test_hybrid_is_the_default_with_ocr_and_puts_the_text_match_first(client, ocr_collection):
    collection, results = ocr_collection
    r = client.post("/img/search", json={"query": "电话13812345678", "collection": collection, "top_k": 6})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert hits[0]["id"] == results["phone_ad"]["id"]
    assert "text" in hits[0]["signals"] and hits[0]["ocr_text"]
    assert all(h["fused_score"] is not None for h in hits)
    assert [h["fused_score"] for h in hits] == sorted((h["fused_score"] for h in hits), reverse=True)
    assert {tuple(h["signals"]) for h in hits[1:]} == {("visual",)}
    visual = client.post(
        "/img/search",
        json={"query": "电话13812345678", "collection": collection, "top_k": 6, "mode": "visual"},
    ).json()["results"]
    assert all(h["signals"] == ["visual"] and h["fused_score"] is None for h in visual)


def test_filters_apply_to_text_matches(client, ocr_collection):
    collection, _ = ocr_collection
    body = {"query": "苹果", "collection": collection, "mode": "text", "filters": {"tags": ["other"]}}
    assert client.post("/img/search", json=body).json()["results"] == []
    body["filters"] = {"tags": ["shop"]}
    assert len(client.post("/img/search", json=body).json()["results"]) == 1


def test_recognised_text_with_boxes_and_confidences(client, ocr_collection):
    collection, results = ocr_collection
    r = client.get(f"/img/images/{collection}/{results['phone_ad']['id']}/ocr")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and "13812345678" in body["text"]
    line = next(x for x in body["lines"] if "13812345678" in x["text"])
    assert len(line["box"]) == 4 and 0.5 <= line["confidence"] <= 1.0
    assert client.get(f"/img/images/{collection}/999999/ocr").status_code == 404


def test_collection_without_ocr_reads_nothing_and_a_job_reads_its_images_later(client):
    collection = unique("noocr")
    assert client.post("/img/collections", json={"name": collection}).json()["ocr"] is False
    named = [
        ("phone_ad", text_image_jpeg(SPECS["phone_ad"])),
        ("url_banner", text_image_jpeg(SPECS["url_banner"])),
    ]
    results = add(client, collection, named)
    assert all(r["status"] == "added" and r["ocr"] is None for r in results)
    body = {"query": "13812345678", "collection": collection}
    assert all(h["signals"] == ["visual"] for h in client.post("/img/search", json=body).json()["results"])
    assert client.post("/img/search", json={**body, "mode": "text"}).json()["results"] == []
    assert client.get(f"/img/images/{collection}/{results[0]['id']}/ocr").status_code == 404

    r = client.post(f"/img/collections/{collection}/ocr")
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["kind"] == "ocr", job
    assert (job["processed"], job["failed"], job["total"]) == (2, 0, 2)
    hits = client.post("/img/search", json={**body, "mode": "text"}).json()["results"]
    assert [h["id"] for h in hits] == [results[0]["id"]]
    hits = client.post("/img/search", json={"query": "example.com", "collection": collection, "mode": "text"})
    assert [h["id"] for h in hits.json()["results"]] == [results[1]["id"]]
    # A second run has nothing left to read.
    job = wait_job(client, client.post(f"/img/collections/{collection}/ocr").json()["job_id"])
    assert (job["state"], job["processed"]) == ("succeeded", 0)


def test_deleting_an_image_forgets_its_text(client):
    collection = unique("ocrdel")
    client.post("/img/collections", json={"name": collection, "ocr": True})
    [result] = add(client, collection, [("shop_sign", text_image_jpeg(SPECS["shop_sign"]))])
    body = {"query": "面馆", "collection": collection, "mode": "text"}
    assert len(client.post("/img/search", json=body).json()["results"]) == 1
    assert client.delete(f"/img/images/{collection}/{result['id']}").status_code == 200
    assert client.post("/img/search", json=body).json()["results"] == []
    svc = client.services
    from operations.ocr import ocr_store

    assert ocr_store(svc).get(collection, [result["id"]]) == {}


def test_mode_is_validated(client, ocr_collection):
    collection, _ = ocr_collection
    r = client.post("/img/search", json={"query": "苹果", "collection": collection, "mode": "ocr"})
    assert r.status_code == 422


def test_scan_finds_ocr_patterns_beside_descriptions(client, ocr_collection):
    collection, results = ocr_collection
    body = {
        "collection": collection,
        "threshold": 0.99,  # no CLIP hit at this threshold: only the OCR rows
        "descriptions": ["红色的圆形"],
        "ocr_patterns": [{"builtin": "phone_cn"}, {"regex": r"特价\s*[¥￥]\d+"}, {"builtin": "wechat"}],
    }
    r = client.post("/img/scan", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    rows = {(h["image_id"], h["description"]): h for h in out["hits"]}
    phone = rows[(results["phone_ad"]["id"], "builtin:phone_cn")]
    assert (
        phone["signal"] == "ocr"
        and phone["matched_text"] == "13812345678"
        and phone["description_index"] == 1
    )
    price = rows[(results["price_tag_apple"]["id"], "regex:特价\\s*[¥￥]\\d+")]
    assert price["matched_text"].startswith("特价") and price["description_index"] == 2
    assert len(out["hits"]) == out["total"] == 2  # no WeChat id in these images, nothing else matches
    # OCR patterns alone, filtered, and as CSV
    only = {"collection": collection, "threshold": 0.3, "ocr_patterns": [{"builtin": "phone_cn"}]}
    assert [h["image_id"] for h in client.post("/img/scan", json=only).json()["hits"]] == [
        results["phone_ad"]["id"]
    ]
    none = {**only, "filters": {"sources": ["elsewhere"]}}
    assert client.post("/img/scan", json=none).json()["hits"] == []
    csv = client.post("/img/scan", json={**only, "format": "csv"})
    assert csv.status_code == 200 and "13812345678" in csv.text and ",ocr," in csv.text


def test_scan_patterns_are_validated_and_bounded(client, ocr_collection):
    collection, _ = ocr_collection
    base = {"collection": collection, "threshold": 0.3}
    for bad in ({"regex": "("}, {"regex": "a*"}, {"builtin": "email"}, {"regex": "x" * 201}, {}):
        r = client.post("/img/scan", json={**base, "ocr_patterns": [bad]})
        assert r.status_code == 422, (bad, r.text)
    # A pattern that backtracks catastrophically gives up per line and the scan still answers.
    r = client.post("/img/scan", json={**base, "ocr_patterns": [{"regex": "(.*.*)*[0-9]{30}x"}]})
    assert r.status_code == 200, r.text
    assert r.json()["hits"] == []
    r = client.post("/img/scan", json={**base, "descriptions": []})
    assert r.status_code == 422


def test_scan_patterns_need_ocr(client):
    collection = unique("noocrscan")
    client.post("/img/collections", json={"name": collection})
    r = client.post(
        "/img/scan", json={"collection": collection, "threshold": 0.3, "ocr_patterns": [{"builtin": "url"}]}
    )
    assert r.status_code == 409, r.text
