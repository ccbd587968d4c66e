"""The SQL image store behaves the same on SQLite and on a real MariaDB."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import threading
import time

import pytest

from operations.domain import ImageRow, SearchFilter
from operations.errors import BadRequest, NotFound
from operations.stores.sql_image_store import SqlImageStore
from operations.stores.sql_pool import SqlPool
from tests.stack import jpeg, unique


@pytest.fixture(params=["sqlite", "mariadb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqlImageStore(SqlPool("", tmp_path / "i.sqlite3", 5, 4))
    else:
        s = SqlImageStore(SqlPool(request.getfixturevalue("mariadb").create_database(), None, 5, 8))
    yield s
    s.close()


def _row(i: int, data: bytes | None = None, **kw) -> ImageRow:
    data = data if data is not None else jpeg(i)
    return ImageRow(
        id=i,
        sha256=hashlib.sha256(data).hexdigest(),
        image_b64=base64.b64encode(data).decode(),
        source=kw.pop("source", "商城"),
        tags=kw.pop("tags", ("red", "a_b")),
        created_at=kw.pop("created_at", 1000 + i),
        **kw,
    )


def test_insert_is_idempotent_and_reports_duplicate_bytes(store):
    c = unique()
    store.ensure_collection(c)
    first = store.insert_rows(c, [_row(i) for i in range(1, 6)])
    assert first.inserted == [1, 2, 3, 4, 5] and not first.already_present
    again = store.insert_rows(c, [_row(i) for i in range(1, 6)] + [_row(9, jpeg(2))])
    assert again.already_present == [1, 2, 3, 4, 5] and again.inserted == []
    assert again.duplicate_of == {9: 2}
    assert store.count(c) == 5


def test_rows_round_trip_with_real_photo_sizes(store):
    c = unique()
    store.ensure_collection(c)
    big = os.urandom(3 * 1024 * 1024)  # a 3 MB "photo" must fit the column
    store.insert_rows(c, [_row(7, big, external_id="sku-1", mime="image/png", width=10, height=20)])
    got = store.get_rows(c, [7, 8], with_image=True)
    assert list(got) == [7]
    r = got[7]
    assert base64.b64decode(r.image_b64) == big
    assert (r.source, r.tags, r.external_id, r.mime, r.width, r.height) == (
        "商城",
        ("red", "a_b"),
        "sku-1",
        "image/png",
        10,
        20,
    )
    assert store.get_rows(c, [7])[7].image_b64 is None


def test_indexed_flag_tracks_rows_waiting_for_their_vector(store):
    c = unique()
    store.ensure_collection(c)
    store.insert_rows(c, [_row(i) for i in range(1, 5)])
    assert store.unindexed_ids(c, 10) == [1, 2, 3, 4]
    store.mark_indexed(c, [1, 3])
    assert store.unindexed_ids(c, 10) == [2, 4]
    assert store.indexed_ids(c, [1, 2, 3]) == {1, 3}


def test_unindexed_ids_by_age_leave_younger_rows_out(store):
    """added_before (epoch seconds, against added_at): the rows a dead add left, not a live add's."""
    c = unique()
    store.ensure_collection(c)
    store.insert_rows(c, [_row(i, added_at=1000 * i) for i in range(1, 5)])  # 1000, 2000, 3000, 4000
    store.mark_indexed(c, [1])
    assert store.unindexed_ids(c, 10, added_before=3000) == [2]  # strictly earlier
    assert store.unindexed_ids(c, 10, added_before=3001) == [2, 3]
    assert store.unindexed_ids(c, 1, added_before=10**10) == [2]
    assert store.unindexed_ids(c, 10, added_before=None) == store.unindexed_ids(c, 10) == [2, 3, 4]
    assert store.unindexed_ids(c, 10, added_before=0) == []


def test_rows_are_stamped_with_their_insert_time(store):
    """added_at is set at insert (epoch seconds) when the row does not carry one."""
    c = unique()
    store.ensure_collection(c)
    before = int(time.time())
    store.insert_rows(c, [_row(1)])
    new_id, _ = store.insert_new(c, dataclasses.replace(_row(2), id=None))
    after = int(time.time())
    assert all(before <= r.added_at <= after for r in store.get_rows(c, [1, new_id]).values())
    assert store.unindexed_ids(c, 10, added_before=before) == []
    assert store.unindexed_ids(c, 10, added_before=after + 1) == sorted([1, new_id])


def test_same_upload_at_the_same_moment_is_stored_once(store):
    c = unique()
    store.ensure_collection(c)
    data = jpeg(42)
    results, barrier = [], threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(
            store.insert_new(
                c,
                _row(0, data).__class__(
                    id=None,
                    sha256=hashlib.sha256(data).hexdigest(),
                    image_b64=base64.b64encode(data).decode(),
                ),
            )
        )

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({image_id for image_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert store.count(c) == 1


def test_ids_matching_uses_the_same_filter_semantics(store):
    c = unique()
    store.ensure_collection(c)
    store.insert_rows(
        c,
        [
            _row(1, tags=("a_b",)),
            _row(2, tags=("axb",)),
            _row(3, source="news", tags=()),
            _row(4, created_at=5000, tags=("z",)),
        ],
    )
    assert store.ids_matching(c, SearchFilter(tags=("a_b",)), 10) == [1]  # "_" is not a wildcard
    assert store.ids_matching(c, SearchFilter(sources=("news",)), 10) == [3]
    assert store.ids_matching(c, SearchFilter(created_from=2000), 10) == [4]
    assert store.delete(c, [1, 2, 99]) == 2
    assert store.count(c) == 2


def test_names_are_validated_and_unknown_collections_are_404(store):
    with pytest.raises(BadRequest):
        store.ensure_collection("x; DROP TABLE jobs")
    with pytest.raises(NotFound):
        store.count(unique("missing"))
    c = unique()
    store.ensure_collection(c)
    store.drop_collection(c)
    assert not store.has_collection(c)


def test_rows_over_mysql_max_allowed_packet_are_refused_clearly(mariadb):
    from operations.errors import PayloadTooLarge

    db = mariadb
    store = SqlImageStore(SqlPool(db.create_database(), None, 5, 2))
    try:
        assert store.max_image_b64_bytes() > 1024 * 1024  # read from the server
        store._max_packet = 200 * 1024  # as if the server allowed 200 KB a packet
        c = unique()
        store.ensure_collection(c)
        big, small = _row(1, os.urandom(300 * 1024)), _row(2)
        with pytest.raises(PayloadTooLarge, match="max_allowed_packet"):
            store.insert_new(c, ImageRow(id=None, sha256=big.sha256, image_b64=big.image_b64))
        result = store.insert_rows(c, [big, small])
        assert result.inserted == [2] and "max_allowed_packet" in result.rejected[1]
        assert store.count(c) == 1
    finally:
        store.close()


def test_an_id_holding_another_image_is_never_overwritten(store):
    c = unique()
    store.ensure_collection(c)
    upload_id, _ = store.insert_new(c, ImageRow(id=None, sha256=_row(1).sha256, image_b64=_row(1).image_b64))
    clash = _row(upload_id, jpeg(12345))  # a dataset image that happens to carry the same id
    result = store.insert_rows(c, [clash])
    assert result.inserted == [] and result.already_present == []
    assert "different image" in result.rejected[upload_id]
    assert store.get_rows(c, [upload_id])[upload_id].sha256 == _row(1).sha256


def test_concurrent_batch_inserts_from_two_connections(store):
    """Loads insert batches over several connections at once on MySQL: every
    row arrives once, also when the two batches share an image's bytes."""
    name = unique("par")
    store.ensure_collection(name)
    batches = [[_row(1000 * b + i) for i in range(1, 61)] for b in range(4)]
    batches[3][0] = _row(3001, data=jpeg(1))  # the same bytes as batch 0's first row
    results = {}

    def insert(b):
        results[b] = store.insert_rows(name, batches[b])

    threads = [threading.Thread(target=insert, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert store.count(name) == 4 * 60 - 1
    assert 3001 in results[3].duplicate_of or 1 in results[0].duplicate_of


def test_a_deadlocked_batch_insert_is_retried(tmp_path, monkeypatch):
    """MySQL rolls a deadlock victim back whole; executemany runs it again."""
    import pymysql

    from operations.errors import DependencyUnavailable

    pool = SqlPool("", tmp_path / "x.sqlite3", 5, 2)
    pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    real = pool._transaction
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            try:
                raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
            except pymysql.err.OperationalError as exc:
                raise DependencyUnavailable("mysql", "deadlock") from exc
        return real()

    monkeypatch.setattr(pool, "_transaction", flaky)
    assert pool.executemany("INSERT INTO t (id) VALUES (?)", [(1,), (2,)]) == 2
    assert len(calls) == 2 and pool.query("SELECT COUNT(*) FROM t")[0][0] == 2
    calls.clear()
    monkeypatch.setattr(
        pool, "_transaction", lambda: (_ for _ in ()).throw(DependencyUnavailable("mysql", "server gone"))
    )
    with pytest.raises(DependencyUnavailable):  # anything else is not retried
        pool.executemany("INSERT INTO t (id) VALUES (?)", [(3,)])


def test_image_id_zero_keeps_its_id(store):
    """MySQL would turn an explicit 0 into the next auto-increment id, parting the
    row from its vector (id 0); the pool's session sql_mode prevents that."""
    name = unique("zero")
    store.ensure_collection(name)
    store.insert_rows(name, [_row(5), _row(0)])
    assert set(store.get_rows(name, [0, 5])) == {0, 5}
    assert store.count(name) == 2


def test_mysql_batch_inserts_keep_text_and_images_exact(mariadb):
    """Batch inserts go through prepared statements (values as bytes, never
    lexed; tests/stores/test_mysql_prepared.py). Through the store: Chinese text lands
    as the same characters and is found by filters, images come back as str,
    the image column of new tables is LONGBLOB, and tables made before it was
    (LONGTEXT) still work."""
    from operations.stores.sql_image_store import table_name

    db = mariadb
    store = SqlImageStore(SqlPool(db.create_database(), None, 5, 1))
    try:
        c = unique()
        store.ensure_collection(c)
        column = store.pool.query(
            "SELECT DATA_TYPE FROM information_schema.columns WHERE table_schema = DATABASE()"
            " AND table_name = ? AND column_name = 'image_b64'",
            (table_name(c),),
        )
        assert column == [("longblob",)]
        rows = [
            _row(i, source="图片库 上海", tags=("红色", "夏季_新品"), external_id=f"货号-{i}") for i in (1, 2)
        ]
        executions = "SHOW SESSION STATUS LIKE 'Com_stmt_execute'"
        before = int(store.pool.query(executions)[0][1])
        assert store.insert_rows(c, rows).inserted == [1, 2]
        assert int(store.pool.query(executions)[0][1]) == before + 1  # the prepared path, one 2-row INSERT
        got = store.get_rows(c, [1, 2], with_image=True)
        assert [(g.source, g.tags, g.external_id, g.image_b64) for g in got.values()] == [
            (r.source, r.tags, r.external_id, r.image_b64) for r in rows
        ]
        assert isinstance(got[1].image_b64, str)
        assert store.ids_matching(c, SearchFilter(sources=("图片库 上海",), tags=("夏季_新品",)), 10) == [
            1,
            2,
        ]
        # Again: nothing new, nothing failed.
        again = store.insert_rows(c, rows)
        assert again.inserted == [] and again.already_present == [1, 2]

        legacy = unique("legacy")
        store.ensure_collection(legacy)
        store.pool.execute(f"ALTER TABLE `{table_name(legacy)}` MODIFY image_b64 LONGTEXT NOT NULL")
        assert store.insert_rows(legacy, rows).inserted == [1, 2]
        assert store.get_rows(legacy, [2], with_image=True)[2].image_b64 == rows[1].image_b64

    finally:
        store.close()


def test_count_matching_and_the_created_at_index_of_an_older_table(store):
    """Retention selects and counts by created_at alone: a table made before its index gets
    it when the collection is ensured again, or at its first count."""
    store.ensure_collection("old")
    rows = [_row(i, created_at=1000 + i, source="a" if i % 2 else "b") for i in range(1, 41)]
    store.insert_rows("old", rows)
    mysql = store.pool.dialect == "mysql"
    drop = "ALTER TABLE `img_old` DROP INDEX ix_created" if mysql else 'DROP INDEX "ix_img_old_created"'
    store.pool.execute(drop)

    def has_index() -> bool:
        if mysql:
            sql = (
                "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() "
                "AND table_name = 'img_old' AND index_name = 'ix_created'"
            )
        else:
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'ix_img_old_created'"
        return bool(store.pool.query(sql))

    assert not has_index()
    SqlImageStore(store.pool).ensure_collection("old")  # a process of the new version starts
    assert has_index()
    store.pool.execute(drop)
    fresh = SqlImageStore(store.pool)  # one that only counts (a retention job)
    assert fresh.count_matching("old", SearchFilter(created_to=1010)) == 10
    assert has_index()
    assert store.count_matching("old", SearchFilter(created_to=1010)) == 10
    assert store.count_matching("old", SearchFilter(sources=("a",), created_to=1010)) == 5
    assert store.ids_matching("old", SearchFilter(sources=("b",), created_to=1010), 3) == [2, 4, 6]


def test_an_id_is_never_given_again_after_its_row_is_deleted(store):
    # The vector cleanup deletes the ids of a failed add's rows late (once Milvus answers): an
    # id handed out again to the next add would lose that add's vector.
    c = unique()
    store.ensure_collection(c)
    first, created = store.insert_new(c, _row(0, jpeg(501)))
    assert created
    store.delete(c, [first])
    second, created = store.insert_new(c, _row(0, jpeg(502)))
    assert created and second > first
