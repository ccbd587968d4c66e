"""Serving under load, on the real stores (Milvus Lite + SQLite, Milvus server + MariaDB):
concurrent searches are batched and grouped yet each caller gets exactly its own results
(mixed collections, filters, top_k, min_score, text and image queries); load is shed with
503 + Retry-After through the real app; the consistency rule keeps readers at Bounded
while a writer sees its own add or delete at once."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from operations.domain import SearchFilter
from operations.factory import build_services
from operations.ingest import Upload, add_images
from operations.search import search_text
from operations.stores.milvus_store import MilvusVectorStore
from tests.fixtures_stack import BACKENDS, backend_settings
from tests.stack import jpeg, metric_samples, tiny_encoder, unique


class HashEncoder:
    """A stand-in model whose vectors are random unit vectors seeded by the input:
    every query gets a clearly different answer, so a caller handed another caller's
    result cannot go unnoticed (a random-weight cn_clip gives near-identical vectors
    for all short texts)."""

    model_name, dim, context_length = "tiny", 32, 52

    def check_text(self, text: str) -> None:
        tiny_encoder().check_text(text)

    @staticmethod
    def _unit(seed_bytes: bytes) -> np.ndarray:
        import hashlib

        seed = int.from_bytes(hashlib.sha256(seed_bytes).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(32).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_texts(self, texts):
        from operations.query_cache import normalise_query

        return np.stack([self._unit(normalise_query(t).encode()) for t in texts])

    def encode_images(self, images):
        return np.stack([self._unit(im.convert("RGB").tobytes()) for im in images])


class SlowEncoder:
    """An encoder with a fixed extra cost per forward pass, so concurrent queries pile up
    behind a pass the way they do behind RN50 (and batches form for sure)."""

    def __init__(self, inner, pass_s: float = 0.03) -> None:
        self.inner, self.pass_s = inner, pass_s
        self.model_name, self.dim, self.context_length = inner.model_name, inner.dim, inner.context_length
        self.batch_sizes: list[int] = []

    def check_text(self, text: str) -> None:
        self.inner.check_text(text)

    def encode_texts(self, texts):
        self.batch_sizes.append(len(texts))
        time.sleep(self.pass_s)
        return self.inner.encode_texts(texts)

    def encode_images(self, images):
        self.batch_sizes.append(len(images))
        time.sleep(self.pass_s)
        return self.inner.encode_images(images)


@contextlib.contextmanager
def serving_services(settings, encoder) -> Iterator:
    """Services over `encoder`, with the serving threads and both stores closed afterwards."""
    svc = build_services(settings, encoder=encoder)
    try:
        yield svc
    finally:
        svc.close_serving()
        svc.vectors.close()
        svc.images.close()


QUERIES = [
    f"{c}的{s}在{p}"
    for c in ("红色", "蓝色", "绿色")
    for s in ("圆形", "方块", "星形")
    for p in ("左边", "右边")
]


@pytest.fixture(params=BACKENDS)
def loaded(request, tmp_path):
    """Two collections of 24 images each, sources s1/s2 alternating, tags on every third."""
    settings = backend_settings(request, tmp_path, request.param, query_cache_size=0, result_cache_size=0)
    encoder = SlowEncoder(HashEncoder())
    svc = build_services(settings, encoder=encoder)
    svc.jobs.ensure_tables()
    names = [unique("ba"), unique("bb")]
    for n, name in enumerate(names):
        svc.ensure_collection(name, encoder)
        uploads = [
            Upload(f"{i}.jpg", jpeg(1000 * n + i), f"s{i % 2 + 1}", ("t",) if i % 3 == 0 else ())
            for i in range(24)
        ]
        assert all(r.status == "added" for r in add_images(svc, name, uploads))
    yield svc, names, encoder
    svc.close_serving()
    svc.vectors.close()
    svc.images.close()


def _specs(names):
    filters = [None, SearchFilter(sources=("s1",)), SearchFilter(sources=("s2",), tags=("t",))]
    return [(c, f, k, ms) for c in names for f in filters for k in (5, 10) for ms in (None, -0.5)]


def _reference(svc, encoder, collection, query_vec, flt, top_k, min_score):
    """One search alone, straight to the store: the answer batching must not change."""
    from operations.vector_filter import filter_for_vectors

    flt, nothing = filter_for_vectors(svc, collection, flt)
    hits = [] if nothing else svc.vectors.search(collection, query_vec[None, :], top_k, flt)[0]
    return [(h.id, h.score) for h in hits if min_score is None or h.score >= min_score]


def _same(got, want) -> None:
    """Equal ids in equal order and scores equal to float32 rounding, per caller.
    (Ids repeat across collections: the scores tell one caller's answer from another's.)"""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], atol=1e-4)


def test_concurrent_searches_get_their_own_results(loaded):
    svc, names, encoder = loaded
    specs = _specs(names)
    jobs = [(q, *specs[i % len(specs)]) for i, q in enumerate(QUERIES * 3)]
    vectors = dict(zip(QUERIES, encoder.inner.encode_texts(QUERIES), strict=True))
    want = [_reference(svc, encoder, c, vectors[q], f, k, ms) for q, c, f, k, ms in jobs]
    assert len({tuple((i, round(s, 3)) for i, s in w) for w in want}) > 20

    def one(job):
        q, c, f, k, ms = job
        return [(m.row.id, m.score) for m in search_text(svc, c, q, top_k=k, flt=f, min_score=ms).matches]

    encoder.batch_sizes.clear()
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(one, jobs))
    _same(got, want)
    stats = svc.serving.stats()
    assert max(encoder.batch_sizes) > 1, "queries were never encoded together"
    assert stats["vector_search"]["mean_batch"] > 1, "searches were never grouped"


def test_concurrent_requests_through_the_app(loaded):
    svc, names, encoder = loaded
    images = [jpeg(5000 + i) for i in range(6)]
    image_vecs = {i: v for i, v in enumerate(encoder.inner.encode_images(_decode(images)))}
    text_vecs = dict(zip(QUERIES, encoder.inner.encode_texts(QUERIES), strict=True))
    jobs = []
    for i, q in enumerate(QUERIES * 2):
        c = names[i % 2]
        if i % 4 == 3:
            jobs.append(("image", i % 6, c, 5))
        else:
            jobs.append(("text", q, c, 5 + i % 6))
    want = []
    for kind, q, c, k in jobs:
        vec = text_vecs[q] if kind == "text" else image_vecs[q]
        want.append(_reference(svc, encoder, c, vec, None, k, None))

    with TestClient(create_app(svc.settings, svc)) as client:

        def one(job):
            kind, q, c, k = job
            if kind == "text":
                r = client.post("/img/search", json={"query": q, "top_k": k, "collection": c})
            else:
                r = client.post(
                    "/img/search/image",
                    files={"file": ("q.jpg", images[q], "image/jpeg")},
                    data={"top_k": str(k), "collection": c},
                )
            assert r.status_code == 200, r.text
            body = r.json()
            assert {"queue", "encode", "vector_search", "image_fetch", "total"} <= set(body["timings_ms"])
            return [(x["id"], x["score"]) for x in body["results"]]

        with ThreadPoolExecutor(24) as pool:
            got = list(pool.map(one, jobs))
        _same(got, want)
        stats = client.get("/img/stats").json()
        assert stats["vector_search"]["items"] >= len(jobs)


def _decode(images):
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(b)).convert("RGB") for b in images]


def test_batching_off_answers_the_same(request, tmp_path):
    settings = backend_settings(request, tmp_path, "lite", batch_window_ms=0, query_cache_size=0)
    encoder = SlowEncoder(HashEncoder(), pass_s=0.005)
    with serving_services(settings, encoder) as svc:
        name = unique("bo")
        svc.ensure_collection(name, encoder)
        add_images(svc, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(12)])
        want = {q: [m.row.id for m in search_text(svc, name, q, top_k=6).matches] for q in QUERIES}
        encoder.batch_sizes.clear()
        with ThreadPoolExecutor(8) as pool:
            got = dict(
                zip(
                    QUERIES,
                    pool.map(lambda q: [m.row.id for m in search_text(svc, name, q, 6).matches], QUERIES),
                    strict=True,
                )
            )
        assert got == want
        assert set(encoder.batch_sizes) == {1}
        assert svc.serving.stats()["vector_search"]["mean_batch"] == 1.0


def test_repeated_query_is_served_from_the_cache(request, tmp_path):
    settings = backend_settings(request, tmp_path, "lite", query_cache_size=16)
    encoder = SlowEncoder(tiny_encoder(), pass_s=0.0)
    with serving_services(settings, encoder) as svc:
        name = unique("qc")
        svc.ensure_collection(name, encoder)
        add_images(svc, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(8)])
        first = search_text(svc, name, "红色的圆形", top_k=5)
        encoder.batch_sizes.clear()
        again = search_text(svc, name, " 红色的圆形", top_k=5)
        assert encoder.batch_sizes == []  # not encoded again
        assert [m.row.id for m in again.matches] == [m.row.id for m in first.matches]
        assert again.timings_ms["encode"] == 0.0
        stats = svc.serving.stats()["query_cache"]
        assert (stats["hits"], stats["misses"]) == (1, 1)


def test_a_composed_query_encodes_in_one_batch_through_the_cache(request, tmp_path):
    """A query with an unwanted term (and one with an image) goes through the serving layer as
    plain searches do: its texts in one pass, the query cache on a repeat, the same results."""
    from operations.relevance.search import RelevanceQuery, relevance_search

    settings = backend_settings(request, tmp_path, "lite", query_cache_size=16, result_cache_size=0)
    encoder = SlowEncoder(tiny_encoder(), pass_s=0.0)
    with serving_services(settings, encoder) as svc:
        name = unique("cq")
        svc.ensure_collection(name, encoder)
        add_images(svc, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(12)])
        encoder.batch_sizes.clear()
        rq = RelevanceQuery(query="红色的圆形 -蓝色", top_k=6)
        first, _ = relevance_search(svc, name, rq)
        assert encoder.batch_sizes == [2]  # both terms in one pass
        again, _ = relevance_search(svc, name, RelevanceQuery(query="红色的圆形 -蓝色", top_k=6))
        assert encoder.batch_sizes == [2]  # both from the cache
        assert [m.row.id for m in again.matches] == [m.row.id for m in first.matches]
        stats = svc.serving.stats()["query_cache"]
        assert (stats["hits"], stats["misses"]) == (2, 2)
        image_rq = RelevanceQuery(query="红色的圆形 -蓝色", image=jpeg(3), top_k=6)
        with_image, _ = relevance_search(svc, name, image_rq)
        assert encoder.batch_sizes == [2, 1]  # the image alone; the terms cached
        again_with_image, _ = relevance_search(svc, name, image_rq)
        assert encoder.batch_sizes == [2, 1, 1]  # images are not cached: encoded again, alone
        assert [m.row.id for m in again_with_image.matches] == [m.row.id for m in with_image.matches]


def test_two_models_never_share_cached_vectors(request, tmp_path):
    """Collections of two models with the same name and dim but other weights: a query
    cached for one is encoded afresh for the other."""
    from operations.context import EncoderRegistry
    from operations.encoding.clip_encoder import ClipEncoder, ModelSpec
    from tests.stack import TINY_ARCH

    settings = backend_settings(request, tmp_path, "lite", query_cache_size=16)
    a = tiny_encoder()
    b = ClipEncoder.load(ModelSpec(name="tiny2", arch=str(TINY_ARCH), random_init=True, seed=7, device="cpu"))
    svc = build_services(settings, encoder=a)
    svc.encoders = EncoderRegistry(a, {"tiny2": lambda: b})
    try:
        ca, cb = unique("ma"), unique("mb")
        svc.ensure_collection(ca, a)
        svc.ensure_collection(cb, svc.encoders.get("tiny2"))
        for c in (ca, cb):
            add_images(svc, c, [Upload(f"{i}.jpg", jpeg(i)) for i in range(8)])
        q = "蓝色的星形"
        ra = search_text(svc, ca, q, top_k=8)
        rb = search_text(svc, cb, q, top_k=8)
        assert rb.model == "tiny2" and ra.model == "tiny"
        want_b = b.encode_texts([q])[0]
        got_b = svc.vectors.search(cb, want_b[None, :], 8)[0]
        assert [m.row.id for m in rb.matches] == [h.id for h in got_b]
        np.testing.assert_allclose([m.score for m in rb.matches], [h.score for h in got_b], atol=1e-5)
        assert svc.serving.stats()["query_cache"]["misses"] == 2
    finally:
        svc.close_serving()
        svc.vectors.close()
        svc.images.close()


class BlockingEncoder(SlowEncoder):
    def __init__(self, inner) -> None:
        super().__init__(inner, 0.0)
        self.release = threading.Event()
        self.started = threading.Event()

    def encode_texts(self, texts):
        self.started.set()
        self.release.wait(30)
        return self.inner.encode_texts(texts)


def test_the_app_sheds_load_with_503_and_retry_after(request, tmp_path):
    settings = backend_settings(
        request, tmp_path, "lite", queue_limit=2, batch_window_ms=0, query_cache_size=0
    )
    encoder = BlockingEncoder(tiny_encoder())
    svc = build_services(settings, encoder=encoder)
    name = unique("sh")
    svc.ensure_collection(name, encoder)
    add_images(svc, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(4)])
    with TestClient(create_app(settings, svc)) as client, ThreadPoolExecutor(4) as pool:

        def ask(q):
            return client.post("/img/search", json={"query": q, "collection": name, "top_k": 3})

        def metric(name: str, **labels: str) -> float:
            samples = metric_samples(client.get("/metrics").text)
            return samples.get((name, frozenset(labels.items())), 0.0)

        overloaded = metric("imgsearch_unavailable_responses_total", cause="overloaded")
        shed_before = metric("imgsearch_shed_total", batcher="tiny text encoder", reason="queue_full")
        try:
            running = pool.submit(ask, "正在编码")
            assert encoder.started.wait(20)
            waiting = [pool.submit(ask, f"排队{i}") for i in range(2)]
            deadline = time.monotonic() + 20
            while svc.serving.stats()["encoders"]["tiny text encoder"]["queued"] < 2:
                assert time.monotonic() < deadline, svc.serving.stats()
                time.sleep(0.02)
            t = time.monotonic()
            shed = ask("一个太多")
            assert time.monotonic() - t < 2.0
            assert shed.status_code == 503
            assert shed.headers["Retry-After"] == "1"
            assert shed.json()["error"]["code"] == "overloaded"
        finally:
            encoder.release.set()
        assert running.result(30).status_code == 200
        assert [w.result(30).status_code for w in waiting] == [200, 200]
        stats = client.get("/img/stats").json()
        assert stats["encoders"]["tiny text encoder"]["shed_full"] == 1
        # /metrics says the same: one item shed, one 503 for overload.
        assert (
            metric("imgsearch_shed_total", batcher="tiny text encoder", reason="queue_full") - shed_before
            == 1
        )
        assert metric("imgsearch_unavailable_responses_total", cause="overloaded") - overloaded == 1


def test_writer_sees_its_writes_while_reads_stay_bounded(milvus_server, mariadb, tmp_path, request):
    """On the Milvus server: an add or delete returns once searches see it (one Strong
    probe in the writer's request), and every search, the writer's included, reads at
    Bounded; a reader that never writes never probes."""
    settings = backend_settings(request, tmp_path, "server")
    svc = build_services(settings, encoder=tiny_encoder())
    svc.jobs.ensure_tables()
    reader = MilvusVectorStore(milvus_server.uri, timeout_s=10)
    try:
        name = unique("cw")
        svc.ensure_collection(name)
        add_images(svc, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(10)])
        store = svc.vectors.inner  # the Milvus store under the name resolver (operations.aliases)
        assert isinstance(store, MilvusVectorStore) and store.consistency == "Adaptive"
        for round_ in range(3):
            data = jpeg(900 + round_)
            before = store.probes.get(name, 0)
            [added] = add_images(svc, name, [Upload("new.jpg", data)])
            assert added.status == "added"
            assert store.probes[name] == before + 1
            vec = tiny_encoder().encode_images(_decode([data]))[0]
            hits = store.search(name, vec[None, :], 3)[0]
            assert hits[0].id == added.id  # the writer's next search sees its add
            assert store.last_read_level[name] == "Bounded"
            from operations.delete import delete_ids

            assert delete_ids(svc, name, [added.id]) == 1
            assert store.probes[name] == before + 2
            hits = store.search(name, vec[None, :], 3)[0]
            assert added.id not in [h.id for h in hits]  # ... and its delete
            assert store.last_read_level[name] == "Bounded"
            # Another process's store that only reads: cheap level, never a probe.
            reader.search(name, vec[None, :], 3)
            assert reader.last_read_level[name] == "Bounded"
            assert reader.probes == {}
        # Nothing written since the last probe: no new probe.
        probes = store.probes[name]
        store.wait_visible(name)
        assert store.probes[name] == probes
    finally:
        reader.close()
        svc.close_serving()
        svc.vectors.close()
        svc.images.close()


def _image_search(svc, name, data, top_k=3):
    from operations.search import search_image

    return search_image(svc, name, data=data, top_k=top_k)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_repeated_search_is_served_from_the_result_cache_until_this_process_writes(kind, request, tmp_path):
    settings = backend_settings(request, tmp_path, kind, result_cache_ttl_s=600)
    encoder = SlowEncoder(HashEncoder(), pass_s=0.0)
    svc = build_services(settings, encoder=encoder)
    svc.jobs.ensure_tables()
    try:
        name = unique("rc")
        svc.ensure_collection(name, encoder)
        add_images(svc, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(8)])
        probe = jpeg(4242)  # not in the collection yet
        first = _image_search(svc, name, probe)
        again = _image_search(svc, name, probe)
        assert again.timings_ms["vector_search"] == 0.0  # no Milvus call
        assert [(m.row.id, m.score) for m in again.matches] == [(m.row.id, m.score) for m in first.matches]
        assert svc.serving.stats()["result_cache"]["hits"] == 1
        # This process adds the probe image: the next search must find it (score 1) although
        # the cached entry is far from expiring.
        [added] = add_images(svc, name, [Upload("probe.jpg", probe)])
        after_add = _image_search(svc, name, probe)
        assert after_add.matches[0].row.id == added.id
        assert after_add.matches[0].score == pytest.approx(1.0, abs=1e-4)
        # ... and a delete shows at once too.
        from operations.delete import delete_ids

        _image_search(svc, name, probe)  # cached again, with the probe on top
        assert delete_ids(svc, name, [added.id]) == 1
        after_delete = _image_search(svc, name, probe)
        assert added.id not in [m.row.id for m in after_delete.matches]
        assert len(after_delete.matches) == 3
    finally:
        svc.close_serving()
        svc.vectors.close()
        svc.images.close()


def test_another_processs_write_shows_within_the_result_cache_ttl(milvus_server, mariadb, tmp_path, request):
    """Two services on one Milvus server and one database (two replicas): B's add reaches A's
    searches within RESULT_CACHE_TTL_S (A's cached entry cannot know of it before)."""
    ttl = 1.5
    settings = backend_settings(request, tmp_path, "server", result_cache_ttl_s=ttl)
    encoder = SlowEncoder(HashEncoder(), pass_s=0.0)
    a = build_services(settings, encoder=encoder)
    b = build_services(settings, encoder=encoder)
    a.jobs.ensure_tables()
    try:
        name = unique("rt")
        a.ensure_collection(name, encoder)
        add_images(a, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(8)])
        probe = jpeg(777)
        _image_search(a, name, probe)  # A caches a result without the probe
        written = time.monotonic()
        [added] = add_images(b, name, [Upload("probe.jpg", probe)])
        seen_at = None
        while time.monotonic() < written + ttl + 10:
            if _image_search(a, name, probe).matches[0].row.id == added.id:
                seen_at = time.monotonic()
                break
            time.sleep(0.1)
        assert seen_at is not None, "A never saw B's add"
        # Milvus' Bounded reads may add their own staleness to the TTL (README, consistency).
        assert seen_at - written <= ttl + 6.0
        assert a.serving.stats()["result_cache"]["hits"] >= 1
    finally:
        for svc in (a, b):
            svc.close_serving()
            svc.vectors.close()
            svc.images.close()


def test_searches_past_max_in_flight_are_refused_at_once(request, tmp_path):
    encoder = BlockingEncoder(tiny_encoder())
    settings, svc, name = _small_lite_service(request, tmp_path, encoder, "mf", 4, max_in_flight=2)
    with TestClient(create_app(settings, svc)) as client, ThreadPoolExecutor(4) as pool:

        def ask(q):
            return client.post("/img/search", json={"query": q, "collection": name, "top_k": 3})

        try:
            running = [pool.submit(ask, f"第{i}个") for i in range(2)]
            deadline = time.monotonic() + 20
            while svc.serving.stats()["admission"]["in_flight"] < 2:
                assert time.monotonic() < deadline, svc.serving.stats()
                time.sleep(0.02)
            t = time.monotonic()
            refused = ask("一个太多")
            assert time.monotonic() - t < 0.5
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
        finally:
            encoder.release.set()
        assert [r.result(30).status_code for r in running] == [200, 200]
        stats = client.get("/img/stats").json()["admission"]
        assert stats == {"in_flight": 0, "limit": 2, "refused": 1}
        assert ask("又可以了").status_code == 200


class CoreRecordingEncoder(SlowEncoder):
    """Notes, per text pass, whether the serving layer asked for every core."""

    def __init__(self, inner) -> None:
        super().__init__(inner, 0.0)
        self.every_core: list[bool] = []

    def encode_texts(self, texts):
        from operations.encoding.base import every_core_requested

        self.every_core.append(every_core_requested())
        return super().encode_texts(texts)


def _small_lite_service(request, tmp_path, encoder, prefix: str, images: int, **overrides):
    """Services on Lite + SQLite with one collection of `images` images: (settings, svc, name)."""
    settings = backend_settings(request, tmp_path, "lite", query_cache_size=0, **overrides)
    svc = build_services(settings, encoder=encoder)
    name = unique(prefix)
    svc.ensure_collection(name, encoder)
    add_images(svc, name, [Upload(f"{i}.jpg", jpeg(i)) for i in range(images)])
    return settings, svc, name


def test_only_a_lone_search_encodes_on_every_core(request, tmp_path):
    encoder = CoreRecordingEncoder(tiny_encoder())
    settings, svc, name = _small_lite_service(request, tmp_path, encoder, "ec", 4, batch_window_ms=0)
    encoder.every_core.clear()  # adds encode images only, but be sure
    with TestClient(create_app(settings, svc)) as client, ThreadPoolExecutor(2) as pool:

        def ask(q):
            return client.post("/img/search", json={"query": q, "collection": name, "top_k": 3})

        assert ask("独自一个").status_code == 200
        assert encoder.every_core == [True]
        # Two searches in progress: the first is held in its vector search (after an encode
        # that ran alone) while the second is admitted and encoded: that pass must not spread.
        encoder.every_core.clear()
        in_search, leave_search = threading.Event(), threading.Event()
        real_search = svc.vectors.search

        def held_search(*args, **kwargs):
            in_search.set()
            assert leave_search.wait(30)
            return real_search(*args, **kwargs)

        svc.vectors.search = held_search  # the serving layer's store (one object)
        try:
            first = pool.submit(ask, "第一个")
            assert in_search.wait(20)
            svc.vectors.search = real_search  # the second search goes through at once
            second = pool.submit(ask, "第二个")
            assert second.result(30).status_code == 200
        finally:
            svc.vectors.search = real_search
            leave_search.set()
        assert first.result(30).status_code == 200
        assert encoder.every_core == [True, False]
        assert ask("又是一个").status_code == 200
        assert encoder.every_core[-1] is True
    svc.close_serving()
    svc.vectors.close()
    svc.images.close()


def test_spreading_a_lone_query_can_be_turned_off(request, tmp_path):
    encoder = CoreRecordingEncoder(tiny_encoder())
    settings, svc, name = _small_lite_service(
        request, tmp_path, encoder, "eo", 2, encoder_spread_lone_query=False
    )
    with TestClient(create_app(settings, svc)) as client:
        r = client.post("/img/search", json={"query": "独自一个", "collection": name, "top_k": 2})
        assert r.status_code == 200
    assert encoder.every_core == [False]
    svc.close_serving()
    svc.vectors.close()
    svc.images.close()
