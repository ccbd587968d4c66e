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
from operations.errors import DependencyUnavailable
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


@pytest.mark.parametrize("first_fails", [True, False])
def test_the_second_add_of_the_same_bytes_waits_for_the_first(services, monkeypatch, first_fails):
    svc = services
    name = unique()
    create_collection(svc, name)
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
    """The holder's process died (its row stays without a vector until a repair): the
    second add answers "present" after HOLDER_WAIT_S, as before, instead of waiting on."""
    svc = services
    name = unique()
    create_collection(svc, name)
    started, release = _first_write_held(monkeypatch, svc, fails=True)
    monkeypatch.setattr(ingest, "HOLDER_WAIT_S", 0.5)
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
    assert (result.status, result.id) == ("present", holder) and 0.5 <= waited < 5


def test_the_same_bytes_twice_in_one_add_wait_for_nobody(services):
    svc = services
    name = unique()
    create_collection(svc, name)
    t = time.monotonic()
    results = add_images(svc, name, [Upload("a.jpg", jpeg(7)), Upload("again.jpg", jpeg(7))])
    assert [r.status for r in results] == ["added", "present"] and results[0].id == results[1].id
    assert time.monotonic() - t < ingest.HOLDER_WAIT_S
