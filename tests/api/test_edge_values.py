"""Integers and strings at the edge, on both backend pairs: a value outside what the
stores hold is a 422 naming the field before any store is called, never a 500
or a 503 ("unavailable" is for a store that cannot be reached)."""

from __future__ import annotations

import json

import pytest

from tests.stack import jpeg, unique

BIG = 2**63  # one past int64
HUGE = 32847212018280433713152


@pytest.fixture(scope="module")
def client(module_client):
    return module_client


@pytest.fixture(scope="module")
def stored(client):
    collection = unique("edge")
    assert client.post("/img/collections", json={"name": collection}).status_code == 201
    r = client.post(f"/img/images/{collection}", files={"files": ("e.jpg", jpeg(8080), "image/jpeg")})
    assert r.status_code == 200, r.text
    return collection, r.json()["results"][0]["id"]


def _field_named(response, field: str) -> None:
    assert response.status_code == 422, response.text
    err = response.json()["error"]
    fields = [p["field"] for p in err["details"].get("problems", [])] or [err["message"]]
    assert any(field in f for f in fields), err
    assert field in err["message"], err


@pytest.mark.parametrize("image_id", [HUGE, BIG, -1, -BIG])
def test_image_ids_outside_the_stores_range_are_422_naming_image_id(client, stored, image_id):
    collection, _ = stored
    for response in (
        client.get(f"/img/images/{collection}/{image_id}"),
        client.get(f"/img/images/{collection}/{image_id}?size=64"),
        client.get(f"/img/images/{collection}/{image_id}/meta"),
        client.delete(f"/img/images/{collection}/{image_id}"),
    ):
        _field_named(response, "image_id")
    r = client.post("/img/search/image", data={"image_id": str(image_id), "collection": collection})
    _field_named(r, "image_id")


def test_the_largest_int64_id_is_a_plain_404(client, stored):
    collection, _ = stored
    assert client.get(f"/img/images/{collection}/0").status_code == 404
    assert client.get(f"/img/images/{collection}/{BIG - 1}").status_code == 404
    assert client.get(f"/img/images/{collection}/{BIG - 1}/meta").status_code == 404
    assert client.delete(f"/img/images/{collection}/{BIG - 1}").status_code == 404


@pytest.mark.parametrize("bad", [BIG, HUGE, -5])
def test_delete_many_with_ids_outside_int64_is_422(client, stored, bad):
    collection, image_id = stored
    r = client.post(f"/img/images/{collection}/delete", json={"ids": [image_id, bad]})
    _field_named(r, "ids.1")
    assert client.get(f"/img/images/{collection}/{image_id}/meta").status_code == 200  # nothing deleted


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"offset": BIG}, "offset"),
        ({"offset": 10**7}, "offset"),
        ({"offset": -1}, "offset"),
        ({"limit": BIG}, "limit"),
        ({"threshold": 1.5}, "threshold"),
        ({"filters": {"created_from": BIG}}, "filters.created_from"),
        ({"filters": {"created_to": 10**13}}, "filters.created_to"),
    ],
)
def test_scan_bounds(client, stored, body, field):
    collection, _ = stored
    r = client.post(
        "/img/scan", json={"descriptions": ["红色"], "threshold": 0.1, "collection": collection, **body}
    )
    _field_named(r, field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/img/search", {"query": "红色", "filters": {"created_from": BIG}}, "filters.created_from"),
        ("/img/search", {"query": "红色", "top_k": BIG}, "top_k"),
        ("/img/search", {"query": "红色", "min_score": -2}, "min_score"),
        ("/img/collections", {"name": "x_edge", "source_partitions": BIG}, "source_partitions"),
        ("/img/collections", {"name": "x_edge", "index_type": "HNSW", "index_params": {"M": BIG}}, "M"),
    ],
)
def test_json_integers_have_explicit_bounds(client, stored, path, body, field):
    _field_named(client.post(path, json=body), field)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"created_at": str(BIG)}, "created_at"),
        ({"created_at": str(10**13)}, "created_at"),
        ({"created_at": "-1"}, "created_at"),
    ],
)
def test_form_integers_have_explicit_bounds(client, stored, data, field):
    collection, _ = stored
    r = client.post(
        f"/img/images/{collection}", files={"files": ("f.jpg", jpeg(8181), "image/jpeg")}, data=data
    )
    _field_named(r, field)
    s = client.post(
        "/img/search/image",
        data={"image_id": "1", "collection": collection, "created_from": data["created_at"]},
    )
    _field_named(s, "created_from")


def test_jobs_query_bounds(client):
    _field_named(client.get(f"/img/jobs?limit={BIG}"), "limit")
    _field_named(client.get(f"/img/jobs/abc?failures={BIG}"), "failures")


def test_a_lone_surrogate_in_a_scan_description_is_422(client, stored):
    collection, _ = stored
    raw = '{"descriptions": ["\\ud800红"], "threshold": -1, "collection": "' + collection + '"}'
    r = client.post("/img/scan", content=raw, headers={"content-type": "application/json"})
    _field_named(r, "descriptions.0")
    raw = '{"query": "\\udfff", "collection": "' + collection + '"}'
    r = client.post("/img/search", content=raw, headers={"content-type": "application/json"})
    _field_named(r, "query")


@pytest.mark.parametrize(
    "value",
    [
        "[" * 10_000 + "]" * 10_000,
        "[" * 10_000,
        json.dumps([{"a": 1}]),
        json.dumps([["x"]]),
        json.dumps(["x" * 300]),
    ],
)
def test_external_ids_that_are_not_a_flat_list_of_strings_are_422(client, stored, value):
    collection, _ = stored
    before = client.get(f"/img/collections/{collection}/count").json()
    r = client.post(
        f"/img/images/{collection}",
        files={"files": ("n.jpg", jpeg(8282), "image/jpeg")},
        data={"external_ids": value},
    )
    _field_named(r, "external_ids")
    assert client.get(f"/img/collections/{collection}/count").json() == before


def test_a_store_refusing_content_is_a_4xx_not_unavailable(client, stored):
    """The stores' own guard: an id beyond int64 reaching the operation is refused as input."""
    from operations.delete import delete_ids
    from operations.errors import InvalidInput

    collection, _ = stored
    with pytest.raises(InvalidInput):
        delete_ids(client.services, collection, [BIG])
    with pytest.raises(InvalidInput):
        client.services.images.get_rows(collection, [HUGE], with_image=False)
