"""Congruence: the Milvus store (Lite and server) answers like the exact in-memory store."""

from __future__ import annotations

import numpy as np
import pytest

from operations.domain import IndexSpec, SearchFilter, VectorAttrs
from operations.errors import BadRequest, Conflict, InvalidInput, NotFound
from operations.stores.memory_vector_store import InMemoryVectorStore
from operations.stores.milvus_store import MilvusVectorStore
from tests.stack import unique, unit_rows

DIM = 16


@pytest.fixture(params=["memory", "lite", "server"])
def store(request, tmp_path):
    if request.param == "memory":
        s = InMemoryVectorStore()
    elif request.param == "lite":
        s = MilvusVectorStore(str(tmp_path / "v.db"), timeout_s=5)
    else:
        s = MilvusVectorStore(request.getfixturevalue("milvus_server").uri, timeout_s=10)
    yield s
    s.close()


def _attrs(i: int) -> VectorAttrs:
    return VectorAttrs(
        source=["商城", "news", "risk_a"][i % 3],
        tags=(("red",) if i % 2 else ("blue", "big_one")),
        created_at=1_700_000_000 + i,
    )


@pytest.fixture
def filled(store):
    name = unique("v")
    ids = list(range(100, 160))
    vecs = unit_rows(len(ids), DIM, seed=1)
    ref = InMemoryVectorStore()
    for s in (store, ref):
        s.create_collection(name, DIM, "m1", IndexSpec())
        assert s.upsert(name, ids, vecs, [_attrs(i) for i in ids]) == len(ids)
    yield store, ref, name, ids, vecs
    store.drop_collection(name)


FILTERS = [
    None,
    SearchFilter(sources=("商城",)),
    SearchFilter(sources=("news", "risk_a"), created_from=1_700_000_120),
    SearchFilter(tags=("big_one",)),
    SearchFilter(tags=("red", "nothing")),
    SearchFilter(created_from=1_700_000_110, created_to=1_700_000_130),
    SearchFilter(exclude_ids=(100, 101, 102)),
    SearchFilter(only_ids=(100, 103, 117, 131, 159, 999), exclude_ids=(103,)),
    SearchFilter(only_ids=(101, 104, 110), sources=("news",)),
]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: "none" if f is None else repr(f)[:40])
def test_search_matches_exact_reference(filled, flt):
    store, ref, name, ids, vecs = filled
    queries = unit_rows(3, DIM, seed=7)
    got = store.search(name, queries, 10, flt)
    want = ref.search(name, queries, 10, flt)
    for g, w in zip(got, want, strict=True):
        assert [h.id for h in g] == [h.id for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)
        if flt is not None:
            assert all(flt.matches(h.id, _attrs(h.id)) for h in g)


def test_upsert_is_idempotent_and_delete_is_visible_at_once(filled):
    store, _, name, ids, vecs = filled
    store.upsert(name, ids[:10], vecs[:10], [_attrs(i) for i in ids[:10]])
    assert store.count(name) == len(ids)
    top = store.search(name, vecs[:1], 1)[0][0]
    assert top.id == ids[0] and top.score == pytest.approx(1.0, abs=1e-5)
    store.delete(name, [ids[0]])
    assert all(h.id != ids[0] for h in store.search(name, vecs[:1], 5)[0])
    assert store.count(name) == len(ids) - 1
    assert store.existing_ids(name, [ids[0], ids[1], 999]) == {ids[1]}
    got = store.get_vectors(name, [ids[1]])
    np.testing.assert_allclose(got[ids[1]], vecs[1], atol=1e-6)


def test_range_search_matches_reference(filled):
    store, ref, name, ids, vecs = filled
    got = store.range_search(name, vecs[3], 0.2, 1000)
    want = ref.range_search(name, vecs[3], 0.2, 1000)
    assert [h.id for h in got] == [h.id for h in want]
    assert all(h.score >= 0.2 for h in got)


def test_collection_records_its_model(filled):
    store, _, name, _, _ = filled
    info = store.describe(name)
    assert (info.model_name, info.dim, info.count) == ("m1", DIM, 60)
    with pytest.raises(Conflict):
        store.create_collection(name, DIM * 2, "m1", IndexSpec())
    with pytest.raises(Conflict):
        store.create_collection(name, DIM, "other-model", IndexSpec())
    assert name in store.list_collections()


def test_a_write_encoded_with_another_model_is_refused_and_stores_nothing(filled):
    store, _, name, _, vecs = filled
    with pytest.raises(Conflict, match="other-model"):
        store.upsert(name, [900], vecs[:1], model="other-model")
    assert store.existing_ids(name, [900]) == set()
    assert store.upsert(name, [900], vecs[:1], model="m1") == 1  # the collection's own model
    assert store.existing_ids(name, [900]) == {900}


def test_unknown_and_invalid_names(store):
    with pytest.raises(NotFound):
        store.search(unique("missing"), unit_rows(1, DIM, 0), 3)
    with pytest.raises(BadRequest):
        store.has_collection("bad name; drop")


@pytest.mark.parametrize(
    "index",
    [
        IndexSpec("IVF_FLAT", {"nlist": 8}, {"nprobe": 8}),
        IndexSpec("IVF_SQ8", {"nlist": 8}, {"nprobe": 8}),
        IndexSpec("HNSW", {"M": 8, "efConstruction": 64}, {"ef": 64}),
    ],
)
def test_approximate_indexes_find_the_exact_neighbours(store, index):
    name = unique("ix")
    vecs = unit_rows(300, DIM, seed=3)
    store.create_collection(name, DIM, "m1", index)
    store.upsert(name, list(range(300)), vecs)
    try:
        assert store.describe(name).index.type == index.type
        hits = store.search(name, vecs[:20], 5)
        assert sum(h[0].id == i for i, h in enumerate(hits)) >= 19  # each vector finds itself
    finally:
        store.drop_collection(name)


def test_partitioned_by_source_answers_like_the_exact_store(store):
    """A collection with `source` as Milvus partition key (8 partitions): every
    filter gives the exact reference's answer, a row whose source changes moves
    with it, and a delete is visible at once."""
    name = unique("pk")
    ids = list(range(100, 160))
    vecs = unit_rows(len(ids), DIM, seed=1)
    ref = InMemoryVectorStore()
    layout = IndexSpec(source_partitions=8)
    try:
        for s in (store, ref):
            s.create_collection(name, DIM, "m1", layout)
            s.upsert(name, ids, vecs, [_attrs(i) for i in ids])
        assert store.describe(name).index.source_partitions == 8
        if isinstance(store, MilvusVectorStore):
            # Really partitioned in Milvus, not just recorded: the partition key made them.
            # (Lite names them _pk_0.., the 2.3 server _default_0..)
            partitions = store._call(lambda c: c.list_partitions(name))
            assert len(partitions) >= 8
            fields = store._call(lambda c: c.describe_collection(name))["fields"]
            assert next(f for f in fields if f["name"] == "source").get("is_partition_key") is True
        queries = unit_rows(3, DIM, seed=7)
        for flt in FILTERS:
            got, want = store.search(name, queries, 10, flt), ref.search(name, queries, 10, flt)
            assert [[h.id for h in g] for g in got] == [[h.id for h in w] for w in want], flt
        moved = VectorAttrs(source="新来源", tags=("red",), created_at=1)
        for s in (store, ref):
            s.upsert(name, [ids[0]], vecs[:1], [moved])
        only_new = SearchFilter(sources=("新来源",))
        assert [h.id for h in store.search(name, vecs[:1], 5, only_new)[0]] == [ids[0]]
        assert ids[0] not in [
            h.id for h in store.search(name, vecs[:1], 5, SearchFilter(sources=("商城",)))[0]
        ]
        assert store.count(name) == len(ids)
        store.delete(name, [ids[0]])
        assert store.search(name, vecs[:1], 5, only_new)[0] == []
    finally:
        store.drop_collection(name)


def test_partition_count_is_validated(store):
    with pytest.raises(InvalidInput):
        store.create_collection(unique("pk"), DIM, "m1", IndexSpec(source_partitions=5000))


def test_a_new_server_collection_takes_writes_while_it_loads_and_a_bulk_flush_ends_loaded(milvus_server):
    """On a server the collection's load (~2.5-3 s of the coordinator's time)
    runs while the first batches are written; a bulk load's final flush waits
    for it, so the load ends searchable."""
    s = MilvusVectorStore(milvus_server.uri, timeout_s=10)
    name = unique("loading")
    try:
        s.create_collection(name, 8, "tiny", IndexSpec("FLAT", {}, {}))
        assert name not in s._loaded  # creation did not wait for the load
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((20, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        # As a bulk load writes: visibility is waited for once, by the final flush.
        assert s.upsert(name, list(range(20)), vectors, visible=False) == 20
        assert name not in s._loaded  # nor did the write
        s.flush(name, bulk=True)
        state = s._connect().get_load_state(name)["state"]
        assert str(state).endswith("Loaded") and "NotLoad" not in str(state)
        hits = s.search(name, vectors[3:4], 1)[0]
        assert hits[0].id == 3
    finally:
        s.drop_collection(name)
        s.close()


@pytest.mark.parametrize("kind", ["lite", "server"])
def test_a_collection_left_without_its_index_is_mended(kind, request, tmp_path):
    """A creation interrupted after Milvus made the collection but before its
    index leaves a collection that can never load; the next create_collection
    (every load and add calls it) gives it the index, and it then works."""

    uri = str(tmp_path / "v.db") if kind == "lite" else request.getfixturevalue("milvus_server").uri
    s = MilvusVectorStore(uri, timeout_s=10)
    name = unique("noindex")
    try:
        spec = IndexSpec("FLAT", {}, {})
        s.create_collection(name, 8, "tiny", spec)
        s._call(lambda c: c.release_collection(name))
        s._call(lambda c: c.drop_index(name, "vector"))
        s._loaded.clear()
        assert not s._call(lambda c: c.list_indexes(name, field_name="vector"))
        s.create_collection(name, 8, "tiny", spec)
        assert s._call(lambda c: c.list_indexes(name, field_name="vector"))
        vectors = np.eye(8, dtype=np.float32)
        s.upsert(name, list(range(8)), vectors)
        s.flush(name, bulk=True)
        assert s.search(name, vectors[5:6], 1)[0][0].id == 5
    finally:
        s.drop_collection(name)
        s.close()


def test_a_collection_dropped_while_it_loads_can_be_made_again(milvus_server):
    s = MilvusVectorStore(milvus_server.uri, timeout_s=10)
    name = unique("reload")
    try:
        spec = IndexSpec("FLAT", {}, {})
        s.create_collection(name, 8, "tiny", spec)
        s.drop_collection(name)  # its load is still running on the server
        s.create_collection(name, 8, "tiny", spec)
        vectors = np.eye(8, dtype=np.float32)
        s.upsert(name, list(range(8)), vectors)
        # Another process (the API beside a CLI load) reads it while it may
        # still be loading: the read waits for the load.
        other = MilvusVectorStore(milvus_server.uri, timeout_s=10, consistency="Strong")
        try:
            assert other.count(name) == 8
        finally:
            other.close()
        assert s.search(name, vectors[2:3], 1)[0][0].id == 2
    finally:
        s.drop_collection(name)
        s.close()


@pytest.mark.parametrize("kind", ["lite", "server"])
def test_a_collection_with_two_shards_finds_every_vector(kind, request, tmp_path):
    """MILVUS_SHARDS: the server spreads rows over two shards (searched in parallel) and a
    search still sees all of them, exactly; Milvus Lite keeps its single shard."""
    uri = str(tmp_path / "v.db") if kind == "lite" else request.getfixturevalue("milvus_server").uri
    s = MilvusVectorStore(uri, timeout_s=10, shards=2)
    name = unique("shards")
    try:
        s.create_collection(name, DIM, "tiny", IndexSpec("FLAT", {}, {}))
        assert s._call(lambda c: c.describe_collection(name))["num_shards"] == (2 if kind == "server" else 1)
        rows = unit_rows(200, DIM, seed=3)
        ids = list(range(1, 201))
        s.upsert(name, ids, rows)
        s.flush(name, bulk=True)
        exact = InMemoryVectorStore()
        exact.create_collection(name, DIM, "tiny", IndexSpec("FLAT", {}, {}))
        exact.upsert(name, ids, rows)
        queries = unit_rows(20, DIM, seed=4)
        got, want = s.search(name, queries, 10), exact.search(name, queries, 10)
        for g, w in zip(got, want, strict=True):
            assert [h.id for h in g] == [h.id for h in w]
        assert [hits[0].id for hits in s.search(name, rows[:50], 1)] == ids[:50]
    finally:
        s.drop_collection(name)
        s.close()
    with pytest.raises(ValueError):
        MilvusVectorStore(uri, shards=0)
