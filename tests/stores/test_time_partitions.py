"""Time partitions (IndexSpec.time_partitions) in every vector store: rows go into the partition
of their created_at's period, searches read them all, an id whose created_at moves to another
period keeps one copy, and dropping a partition removes exactly its rows."""

from __future__ import annotations

import calendar

import pytest

from operations.domain import IndexSpec, SearchFilter, VectorAttrs
from operations.errors import InvalidInput
from operations.stores.memory_vector_store import InMemoryVectorStore
from operations.stores.milvus_store import MilvusVectorStore
from tests.stack import unique, unit_rows

DIM = 8


def month(m: int) -> int:
    return calendar.timegm((2026, m, 10, 0, 0, 0))


@pytest.fixture(params=["memory", "lite", "server"])
def store(request, tmp_path):
    if request.param == "memory":
        s = InMemoryVectorStore()
    elif request.param == "lite":
        s = MilvusVectorStore(str(tmp_path / "v.db"), timeout_s=10)
    else:
        s = MilvusVectorStore(request.getfixturevalue("milvus_server").uri, timeout_s=10)
    yield s
    s.close()


def test_rows_go_to_their_periods_and_a_moved_row_keeps_one_copy(store, tmp_path) -> None:
    name = unique("tp")
    store.create_collection(name, DIM, "m", IndexSpec(time_partitions="month"))
    ids = list(range(1, 31))
    vecs = unit_rows(len(ids), DIM, seed=3)
    attrs = [VectorAttrs("s", (), month(1 + i % 3)) for i in range(len(ids))]  # Jan, Feb, Mar
    store.upsert(name, ids, vecs, attrs)
    assert store.describe_meta(name).index.time_partitions == "month"
    assert store.time_partitions(name) == ["t2026_01", "t2026_02", "t2026_03"]
    assert store.count(name) == 30
    # Searches read every partition.
    hits = store.search(name, vecs[:3], 1)
    assert [h[0].id for h in hits] == ids[:3]
    flt = SearchFilter(created_to=month(1))
    assert {h.id for h in store.search(name, vecs[0:1], 30, flt)[0]} == set(ids[0::3])
    # Id 1 (January) is written again dated April: one copy, in April's partition. The
    # 2.3.5 server keeps an upserted id's old copy in its old partition: without the delete
    # first, count is 31 and id 1 is found with its January date.
    store.upsert(name, [1], vecs[:1], [VectorAttrs("s", (), month(4))])
    assert store.count(name) == 30
    assert [h.id for h in store.search(name, vecs[:1], 1, SearchFilter(created_from=month(4)))[0]] == [1]
    assert 1 not in {h.id for h in store.search(name, vecs[:1], 30, SearchFilter(created_to=month(1)))[0]}
    # Dropping January removes exactly its rows (not id 1, now in April); again is harmless.
    store.drop_partitions(name, ["t2026_01"])
    store.drop_partitions(name, ["t2026_01"])
    assert "t2026_01" not in store.time_partitions(name)
    assert store.count(name) == 30 - 9
    assert store.existing_ids(name, ids) == set(ids) - set(ids[3::3])
    with pytest.raises(InvalidInput):
        store.drop_partitions(name, ["_default"])
    # A write dated in a dropped period makes its partition again.
    store.upsert(name, [99], vecs[:1], [VectorAttrs("s", (), month(1))])
    assert "t2026_01" in store.time_partitions(name) and store.count(name) == 22
    if isinstance(store, MilvusVectorStore) and not store.is_lite:
        # The granularity is a property of the collection: another process reads it back.
        other = MilvusVectorStore(store.uri, timeout_s=10)
        assert other.describe_meta(name).index.time_partitions == "month"
        assert other.count(name) == 22
        # The other replica drops January, which this one knows to exist: its next write
        # dated January makes the partition again instead of failing.
        other.drop_partitions(name, ["t2026_01"])
        store.upsert(name, [98], vecs[1:2], [VectorAttrs("s", (), month(1))])
        assert "t2026_01" in other.time_partitions(name)
        assert store.existing_ids(name, [98, 99]) == {98}
        other.close()
    store.drop_collection(name)
