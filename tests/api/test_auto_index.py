"""INDEX_TYPE=AUTO / "index_type": "AUTO": FLAT below AUTO_INDEX_FLAT_BELOW expected vectors,
the recall-tuned HNSW above; describe says what AUTO chose, remembers it across a fresh read
of the collection, and says when a collection has grown past the size while FLAT."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from operations.domain import AUTO_HNSW_BUILD, AUTO_HNSW_SEARCH
from operations.load import load_split
from operations.progress import Counter
from operations.search import search_text
from tests.fixtures_stack import backend_settings
from tests.stack import make_services, tiny_encoder, unique, unit_rows, write_dataset

FLAT_BELOW = 50


@pytest.fixture(params=["lite", "server"])
def auto_client(request, tmp_path):
    settings = backend_settings(request, tmp_path, request.param, auto_index_flat_below=FLAT_BELOW)
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:
        c.services = svc
        yield c


def _fresh(c) -> None:
    # Forget what this process cached about collections: describe reads Milvus again.
    c.services.vectors._info_cache.clear()


def test_auto_is_flat_below_the_size_and_says_so_then_flags_growth(auto_client):
    c = auto_client
    name = unique("auto")
    r = c.post("/img/collections", json={"name": name, "index_type": "AUTO"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["index_type"] == "FLAT" and body["index_params"] == {} and body["search_params"] == {}
    assert body["auto_index"] == {"flat_below": FLAT_BELOW, "reindex_due": False}
    dim = tiny_encoder().dim
    c.services.vectors.upsert(name, list(range(1, FLAT_BELOW + 1)), unit_rows(FLAT_BELOW, dim, 1))
    _fresh(c)
    got = c.get(f"/img/collections/{name}").json()
    assert got["index_type"] == "FLAT" and got["vectors"] == FLAT_BELOW
    assert got["auto_index"] == {"flat_below": FLAT_BELOW, "reindex_due": True}
    # A collection created with an explicit type says nothing of AUTO.
    plain = c.post("/img/collections", json={"name": unique("flat"), "index_type": "FLAT"}).json()
    assert plain["auto_index"] is None


def test_auto_above_the_size_is_the_tuned_hnsw_and_searches(auto_client):
    c = auto_client
    name = unique("autoh")
    r = c.post("/img/collections", json={"name": name, "index_type": "AUTO", "expected_vectors": FLAT_BELOW})
    assert r.status_code == 201, r.text
    assert r.json()["index_type"] == "HNSW"
    assert r.json()["index_params"] == AUTO_HNSW_BUILD and r.json()["search_params"] == AUTO_HNSW_SEARCH
    _fresh(c)
    got = c.get(f"/img/collections/{name}").json()
    assert got["index_type"] == "HNSW" and got["auto_index"]["reindex_due"] is False
    dim = tiny_encoder().dim
    vecs = unit_rows(80, dim, 2)
    c.services.vectors.upsert(name, list(range(1, 81)), vecs)
    c.services.vectors.flush(name, bulk=True)
    hits = c.services.vectors.search(name, vecs[:10], 1)
    assert sum(h[0].id == i + 1 for i, h in enumerate(hits)) >= 9


def test_auto_takes_no_parameters(auto_client):
    r = auto_client.post(
        "/img/collections", json={"name": unique("x"), "index_type": "AUTO", "search_params": {"ef": 64}}
    )
    assert r.status_code == 422 and "AUTO" in r.json()["error"]["message"]
    r = auto_client.post(
        "/img/collections", json={"name": unique("x"), "index_type": "AUTO", "expected_vectors": -1}
    )
    assert r.status_code == 422


@pytest.mark.parametrize("size, expected", [(FLAT_BELOW - 10, "FLAT"), (FLAT_BELOW + 10, "HNSW")])
def test_a_load_into_a_new_auto_collection_chooses_by_the_split_size(request, tmp_path, size, expected):
    """INDEX_TYPE=AUTO: a load knows its split's size before it creates the collection."""
    settings = backend_settings(
        request, tmp_path, "lite", index_type="AUTO", auto_index_flat_below=FLAT_BELOW
    )
    svc = make_services(settings)
    try:
        data = settings.data_root / "ds"
        dim = tiny_encoder().dim
        write_dataset(data, "valid", size, dim, seed=4)
        name = unique("autoload")
        report = load_split(svc, name, data, "valid", Counter())
        assert report.loaded == size and report.failed == 0
        info = svc.vectors.describe(name)
        assert info.index.type == expected and info.index.auto and info.count == size
        assert search_text(svc, name, "一只猫", top_k=3).matches
    finally:
        svc.vectors.close()
        svc.images.close()
