"""The micro-batcher and the query cache on their own (no stores): each caller gets its
own result, batches form only under concurrency, the queue sheds load, the cache never
serves another encoder's vector."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY

from operations.batching import MicroBatcher
from operations.errors import Overloaded
from operations.query_cache import QueryCache, normalise_query
from tests.stack import tiny_encoder


def _batcher(run, **kw) -> MicroBatcher:
    args = dict(max_batch=16, window_s=0.005, queue_limit=1000, deadline_s=30.0)
    args.update(kw)
    return MicroBatcher("test", run, **args)


def test_each_caller_gets_its_own_result_under_concurrency():
    sizes: list[int] = []

    def run(key, xs):
        sizes.append(len(xs))
        time.sleep(0.01)  # a forward pass: others queue meanwhile
        return [(key, x * x) for x in xs]

    b = _batcher(run)
    try:

        def call(i: int):
            return b.submit(i, key=i % 3).result(timeout=30)

        with ThreadPoolExecutor(48) as pool:
            results = list(pool.map(call, range(400)))
        for i, timed in enumerate(results):
            assert timed.value == (i % 3, i * i)
        assert max(sizes) > 1, "concurrent callers were never batched"
        assert max(sizes) <= 16
        assert sum(sizes) == 400
    finally:
        b.close()


def test_keys_never_share_a_batch():
    seen: list[set] = []

    def run(key, xs):
        seen.append({x[0] for x in xs})
        time.sleep(0.005)
        return xs

    b = _batcher(run)
    try:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: b.submit(("k", i % 4), key=("k", i % 4)).result(), range(200)))
        assert all(len(s) == 1 for s in seen)
    finally:
        b.close()


def test_window_zero_is_one_item_per_call():
    sizes: list[int] = []

    def run(key, xs):
        sizes.append(len(xs))
        time.sleep(0.002)
        return xs

    b = _batcher(run, window_s=0)
    try:
        with ThreadPoolExecutor(16) as pool:
            out = list(pool.map(lambda i: b.submit(i).result().value, range(64)))
        assert out == list(range(64))
        assert set(sizes) == {1}
    finally:
        b.close()


def test_a_lone_caller_does_not_wait_for_the_window():
    b = _batcher(lambda key, xs: xs, window_s=2.0)
    try:
        for i in range(5):
            t = time.monotonic()
            assert b.submit(i).result(timeout=10).value == i
            # Far below the 2 s window: an idle batcher runs a lone item at once.
            assert time.monotonic() - t < 1.0
    finally:
        b.close()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"batcher": "test", **labels}) or 0.0


def test_a_full_queue_is_refused_at_once_and_a_late_item_is_shed():
    """... and the metrics say so: shed by reason, queue depth, batch sizes."""
    shed_full, shed_late = (
        _sample("imgsearch_shed_total", reason="queue_full"),
        _sample("imgsearch_shed_total", reason="deadline"),
    )
    batches, items = _sample("imgsearch_batch_size_count"), _sample("imgsearch_batch_size_sum")
    release = threading.Event()
    started = threading.Event()

    def run(key, xs):
        started.set()
        release.wait(30)
        return xs

    b = _batcher(run, queue_limit=3, window_s=0, deadline_s=30.0)
    try:
        first = b.submit("running")
        assert started.wait(10)
        queued = [b.submit(i) for i in range(3)]
        t = time.monotonic()
        with pytest.raises(Overloaded) as err:
            b.submit("one too many")
        assert time.monotonic() - t < 0.5
        assert err.value.retry_after_s >= 1
        assert b.stats()["shed_full"] == 1
        assert _sample("imgsearch_shed_total", reason="queue_full") - shed_full == 1
        assert _sample("imgsearch_batch_queue_depth") == 3
        release.set()
        assert first.result(10).value == "running"
        assert [f.result(10).value for f in queued] == [0, 1, 2]
        assert _sample("imgsearch_batch_queue_depth") == 0
        assert _sample("imgsearch_batch_size_count") - batches == 4  # window 0: one item each
        assert _sample("imgsearch_batch_size_sum") - items == 4
    finally:
        release.set()
        b.close()

    # An item still queued when its deadline passes is failed, not run late.
    release2 = threading.Event()
    b = _batcher(lambda key, xs: (release2.wait(30), xs)[1], window_s=0, deadline_s=0.2)
    try:
        blocker = b.submit("blocker")
        time.sleep(0.05)
        late = b.submit("late")
        time.sleep(0.4)
        release2.set()
        assert blocker.result(10).value == "blocker"
        with pytest.raises(Overloaded):
            late.result(10)
        assert b.stats()["shed_deadline"] == 1
        assert _sample("imgsearch_shed_total", reason="deadline") - shed_late == 1
    finally:
        release2.set()
        b.close()


def test_a_failing_batch_fails_each_caller_and_the_batcher_goes_on():
    calls = {"n": 0}

    def run(key, xs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return xs

    b = _batcher(run, window_s=0)
    try:
        with pytest.raises(ValueError):
            b.submit(1).result(10)
        assert b.submit(2).result(10).value == 2
    finally:
        b.close()


def test_query_normalisation_keeps_the_vector():
    # The cache key collapses whitespace and case the way the encoder reads text,
    # so a hit returns exactly the vector the encoder would compute.
    enc = tiny_encoder()
    variants = ["一只 猫 在草地上", "  一只   猫 在草地上 ", "一只\t猫\n在草地上"]
    assert len({normalise_query(v) for v in variants}) == 1
    vectors = enc.encode_texts(variants)
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-6)
    np.testing.assert_allclose(vectors[2], vectors[0], atol=1e-6)
    assert normalise_query("ABC “引号”") == 'abc "引号"'


class _Named:
    """Two encoders with the same model name and settings, different weights."""

    def __init__(self, value: float) -> None:
        self.model_name, self.dim, self.value = "same-name", 4, value


def test_the_cache_never_serves_another_encoders_vector():
    cache = QueryCache(8)
    a, b = _Named(1.0), _Named(2.0)
    cache.put(cache.key(a, "红色的圆形"), np.full(4, a.value, np.float32))
    assert cache.get(cache.key(b, "红色的圆形")) is None
    cache.put(cache.key(b, "红色的圆形"), np.full(4, b.value, np.float32))
    assert cache.get(cache.key(a, "红色的圆形"))[0] == 1.0
    assert cache.get(cache.key(b, " 红色的圆形 "))[0] == 2.0
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (2, 1)
    # A cached vector is read-only: one request cannot change another's.
    with pytest.raises(ValueError):
        cache.get(cache.key(a, "红色的圆形"))[0] = 5.0


def test_cache_size_zero_is_off_and_lru_evicts():
    off = QueryCache(0)
    off.put(("m", "q"), np.zeros(2))
    assert off.get(("m", "q")) is None
    cache = QueryCache(2)
    for q in ("a", "b", "c"):
        cache.put(("m", q), np.zeros(2))
    assert cache.get(("m", "a")) is None
    assert cache.get(("m", "c")) is not None
