"""Two adds of the same bytes at once: the database stores them once, and the second add
answers with the first one's id only once that row has its vector. If the first add fails
(its vector write does), it takes its row back, and the second stores the image itself
instead of answering "present" with an id that is gone. Real stores (Milvus Lite + SQLite,
the Milvus 2.3 server + MariaDB); the first vector write is made to fail, as in an outage."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from operations import ingest
from operations.collections import create_collection
from operations.domain import ImageRow
from operations.errors import DependencyUnavailable
from operations.images import check_image
from operations.ingest import Upload, add_images
from operations.search import search_image
from tests.stack import jpeg, unique


def _first_write_held(monkeypatch, svc, fails: bool):
    """The first vector write waits for the returned event, then fails (or is written)."""
    real = svc.vectors.upsert
    started, release, calls = threading.Event(), threading.Event(), []

    def upsert(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            started.set()
            assert release.wait(30)
            if fails:
                raise DependencyUnavailable("milvus", "no answer within 2 s")
        return real(*args, **kwargs)

    monkeypatch.setattr(svc.vectors, "upsert", upsert)
    return started, release


def _new_collection(svc) -> str:
    name = unique()
    create_collection(svc, name)
    return name


def _row_without_vector(svc, seed: int, added_at: int) -> ImageRow:
    """The row another add stored for jpeg(seed) before its vector (a live or a dead add's)."""
    img = check_image(jpeg(seed), svc.settings.max_upload_bytes, svc.settings.max_image_pixels)
    return ImageRow(
        None, img.sha256, img.b64, img.mime, img.width, img.height, created_at=added_at, added_at=added_at
    )


@pytest.mark.parametrize("first_fails", [True, False])
def test_the_second_add_of_the_same_bytes_waits_for_the_first(services, monkeypatch, first_fails):
    svc, name = services, _new_collection(services)
    started, release = _first_write_held(monkeypatch, svc, fails=first_fails)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(add_images, svc, name, [Upload("a.jpg", jpeg(5))])
        assert started.wait(30)  # the first add's row is in SQL; its vector write hangs
        second = pool.submit(add_images, svc, name, [Upload("b.jpg", jpeg(5))])
        time.sleep(0.5)
        assert not second.done()  # it found the first add's row and waits for its vector
        release.set()
        if first_fails:
            with pytest.raises(DependencyUnavailable):
                first.result(timeout=30)
        else:
            [held] = first.result(timeout=30)
        [result] = second.result(timeout=30)

    if first_fails:
        assert result.status == "added"  # stored by the second add itself
    else:
        assert (result.status, result.id) == ("present", held.id)
    assert svc.vectors.existing_ids(name, [result.id]) == {result.id}
    assert sorted(svc.images.get_rows(name, [result.id])) == [result.id]
    [match] = search_image(svc, name, data=jpeg(5), top_k=1).matches
    assert match.row.id == result.id and svc.images.count(name) == 1


def test_a_row_that_never_gets_its_vector_is_reported_present_after_the_wait(services, monkeypatch):
    """The holder is stuck (its vector write hangs): the second add answers "present" after
    HOLDER_WAIT_S, as before, instead of waiting on."""
    svc, name = services, _new_collection(services)
    started, release = _first_write_held(monkeypatch, svc, fails=True)
    monkeypatch.setattr(ingest, "HOLDER_WAIT_S", 3.0)  # > 1 s: added_at is in whole seconds
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(add_images, svc, name, [Upload("a.jpg", jpeg(6))])
        assert started.wait(30)
        [holder] = svc.images.ids_after(name, 0, 10)
        t = time.monotonic()
        [result] = add_images(svc, name, [Upload("b.jpg", jpeg(6))])
        waited = time.monotonic() - t
        release.set()
        with pytest.raises(DependencyUnavailable):
            first.result(timeout=30)
    assert (result.status, result.id) == ("present", holder) and 2.0 <= waited < 8  # added_at: whole s


def test_the_same_bytes_twice_in_one_add_wait_for_nobody(services):
    svc, name = services, _new_collection(services)
    t = time.monotonic()
    results = add_images(svc, name, [Upload("a.jpg", jpeg(7)), Upload("again.jpg", jpeg(7))])
    assert [r.status for r in results] == ["added", "present"] and results[0].id == results[1].id
    assert time.monotonic() - t < ingest.HOLDER_WAIT_S


def test_a_row_a_dead_add_left_waits_for_nobody(services):
    """A row older than HOLDER_WAIT_S without its vector is a dead process's (a repair indexes
    it): an add of its bytes answers "present" at once."""
    svc, name = services, _new_collection(services)
    left, created = svc.images.insert_new(name, _row_without_vector(svc, 8, int(time.time()) - 3600))
    assert created
    t = time.monotonic()
    [result] = add_images(svc, name, [Upload("a.jpg", jpeg(8))])
    assert (result.status, result.id) == ("present", left) and time.monotonic() - t < 2


def test_two_adds_holding_each_others_bytes_do_not_wait_on_each_other(services, monkeypatch):
    """Add A sends [X, Y], add B [Y, X]; each stores its first image before it meets the other's:
    each indexes its own, then finds the other's indexed, well within HOLDER_WAIT_S."""
    svc, name = services, _new_collection(services)
    real_insert = svc.images.insert_new
    both_first = threading.Barrier(2, timeout=30)
    firsts: set[int] = set()
    lock = threading.Lock()

    def insert_new(collection, row):
        out = real_insert(collection, row)
        with lock:
            first = threading.get_ident() not in firsts  # each add prepares on a thread of its own
            firsts.add(threading.get_ident())
        if first:
            both_first.wait()  # both adds have stored their first image
        return out

    monkeypatch.setattr(svc.images, "insert_new", insert_new)
    x, y = Upload("x.jpg", jpeg(31)), Upload("y.jpg", jpeg(32))
    t = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(add_images, svc, name, [x, y])
        b = pool.submit(add_images, svc, name, [Upload("y.jpg", y.data), Upload("x.jpg", x.data)])
        ra, rb = a.result(timeout=60), b.result(timeout=60)
    assert time.monotonic() - t < ingest.HOLDER_WAIT_S / 2
    assert [r.status for r in ra] == ["added", "present"] and [r.status for r in rb] == ["added", "present"]
    assert {ra[0].id, ra[1].id} == {rb[0].id, rb[1].id} and svc.images.count(name) == 2


def test_a_third_add_holding_the_bytes_meanwhile_is_waited_for_too(services, monkeypatch):
    """A's add fails and takes its row back; before B stores the bytes itself, a third add C
    stores them (a row without its vector) and then fails too: B waits for C as for A, and
    ends up storing the image itself, instead of answering "present" with C's vanished id."""
    svc, name = services, _new_collection(services)
    started, release = _first_write_held(monkeypatch, svc, fails=True)
    real_get_rows = svc.images.get_rows
    third: list[int] = []

    def get_rows(collection, ids, with_image=False):
        rows = real_get_rows(collection, ids, with_image)
        if not third and ids and not rows:  # A's row is gone: C stores the bytes now, and fails later
            third.append(svc.images.insert_new(collection, _row_without_vector(svc, 9, int(time.time())))[0])
            threading.Timer(0.5, lambda: svc.images.delete(collection, third)).start()
        return rows

    monkeypatch.setattr(svc.images, "get_rows", get_rows)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(add_images, svc, name, [Upload("a.jpg", jpeg(9))])
        assert started.wait(30)
        second = threading.Thread(
            target=lambda: results.extend(add_images(svc, name, [Upload("b.jpg", jpeg(9))]))
        )
        results: list = []
        second.start()
        time.sleep(0.3)
        release.set()
        with pytest.raises(DependencyUnavailable):
            first.result(timeout=30)
        second.join(30)
    [result] = results
    assert third and result.status == "added" and result.id not in third
    assert svc.vectors.existing_ids(name, [result.id]) == {result.id}
    assert sorted(svc.images.get_rows(name, [result.id])) == [result.id]


def test_a_store_failing_while_settling_leaves_the_add_done(services, monkeypatch):
    """The SQL store fails while the add waits on another add's row: the add's own image is
    stored and answered "added"; the held one is answered "present", as at the deadline."""
    svc, name = services, _new_collection(services)
    started, release = _first_write_held(monkeypatch, svc, fails=False)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(add_images, svc, name, [Upload("a.jpg", jpeg(10))])
        assert started.wait(30)
        [holder] = svc.images.ids_after(name, 0, 10)
        real_get_rows = svc.images.get_rows

        def get_rows(collection, ids, with_image=False):
            if list(ids) == [holder]:
                raise DependencyUnavailable("sql", "no answer within 2 s")
            return real_get_rows(collection, ids, with_image)

        monkeypatch.setattr(svc.images, "get_rows", get_rows)
        results = add_images(svc, name, [Upload("own.jpg", jpeg(11)), Upload("b.jpg", jpeg(10))])
        release.set()
        first.result(timeout=30)
    assert [r.status for r in results] == ["added", "present"] and results[1].id == holder
    assert svc.vectors.existing_ids(name, [results[0].id]) == {results[0].id}
