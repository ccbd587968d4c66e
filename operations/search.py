"""Search by text or by image; one result shape for both.

A search runs in stages: prepare (validation, the collection's encoder, the
filter; may read the stores), encode (the text or image batcher of
`operations.serving`, or the query cache), vector search (grouped with
concurrent searches of the same collection, filter and top_k) and the SQL
fetch. `search_text` / `search_image` run them in the calling thread (CLI,
tests); `search_text_async` / `search_image_async` await the batchers, so
a request waiting for its batch holds no worker thread, and run the blocking
stages on the worker pool.

Timings (`timings_ms`): queue (waiting for the encoder batch and for the
vector-search group), encode (the forward pass of the batch this query rode
in; 0 on a cache hit), vector_search (the Milvus call), image_fetch (SQL),
total.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from operations import metrics
from operations.batching import Timed
from operations.context import Services
from operations.domain import Hit, ImageRow, SearchFilter, VectorAttrs
from operations.encoding.base import Encoder
from operations.errors import InvalidInput, NotFound
from operations.fusion import MODES, rrf
from operations.images import check_image
from operations.ocr import ocr_enabled, text_matches
from operations.stores.sql_ocr_store import TextMatch
from operations.vector_filter import filter_for_vectors

# The most results one search returns to a caller (API, CLI); the stores' own cap is
# operations.stores.vector_base.MAX_STORE_HITS.
MAX_SEARCH_TOP_K = 100
log = logging.getLogger(__name__)


@dataclass
class Match:
    rank: int
    score: float  # cosine similarity to the query (also for images found by their text)
    row: ImageRow
    signals: tuple[str, ...] = ("visual",)  # which rankings found it: visual, text
    fused: float | None = None  # the RRF score it was ranked by (text and hybrid modes)
    ocr_text: str | None = None  # the line of recognised text that matched the query


@dataclass
class SearchOutcome:
    collection: str
    model: str
    matches: list[Match]
    timings_ms: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def stage(self, name: str, started: float) -> None:
        self.ms[name] = round((time.perf_counter() - started) * 1000, 2)

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = round(self.ms.get(name, 0.0) + ms, 2)

    def finish(self) -> dict[str, float]:
        self.ms["total"] = round((time.perf_counter() - self._t0) * 1000, 2)
        return self.ms


def _check_top_k(top_k: int) -> None:
    if not isinstance(top_k, int) or not 1 <= top_k <= MAX_SEARCH_TOP_K:
        raise InvalidInput(f"top_k must be an integer in 1..{MAX_SEARCH_TOP_K}")


@dataclass
class _Plan:
    """A validated search: what the encode, vector and fetch stages need."""

    collection: str
    encoder: Encoder
    top_k: int
    flt: SearchFilter | None
    min_score: float | None
    with_image: bool
    timer: _Timer
    nothing: bool = False  # the filter matches no image: skip the vector search
    vector: np.ndarray | None = None  # known without encoding (a stored image)
    image: object = None  # a decoded upload to encode
    mode: str = "visual"  # text search: visual (CLIP), text (OCR) or hybrid (both, fused)
    text_hits: list[TextMatch] = field(default_factory=list)
    query_vector: np.ndarray | None = None
    kind: str = "text"  # what the query is (text or image): the stage metrics' label
    name: str = ""  # the collection as the caller named it (`collection` is what it resolved to)

    def finish(self) -> dict[str, float]:
        """The timings of the finished search, also recorded in the stage metrics."""
        timings = self.timer.finish()
        metrics.observe_search(self.kind, timings)
        return timings


def _plan(svc: Services, collection, top_k, flt, min_score, with_image, timer: _Timer | None) -> _Plan:
    _check_top_k(top_k)
    timer = timer or _Timer()
    # Resolved once: the encoder, the vector search and the rows all come from the collection
    # the name pointed at when the search started, even if a switch happens meanwhile.
    store = svc.store_name(collection)
    plan = _Plan(store, svc.encoder_for(store), top_k, flt, min_score, with_image, timer)
    plan.name = collection
    return plan


def _resolve_filter(svc: Services, plan: _Plan) -> _Plan:
    plan.flt, plan.nothing = filter_for_vectors(svc, plan.collection, plan.flt)
    return plan


def _take(timed: Timed, plan: _Plan, stage: str) -> Any:
    plan.timer.add("queue", timed.queue_ms)
    plan.timer.add(stage, timed.run_ms)
    return timed.value


def _finish(svc: Services, plan: _Plan, hits: list) -> SearchOutcome:
    """The SQL rows of the hits, ranked; the outcome with its timings."""
    if plan.min_score is not None:
        hits = [h for h in hits if h.score >= plan.min_score]
    if plan.mode != "visual":
        return _finish_fused(svc, plan, hits)
    t = time.perf_counter()
    rows = (
        svc.images.get_rows(plan.collection, [h.id for h in hits], with_image=plan.with_image) if hits else {}
    )
    plan.timer.stage("image_fetch", t)
    # A vector whose row is gone (a delete interrupted between the stores) is
    # never shown: the row is the source of truth for what exists.
    matches = [Match(0, h.score, rows[h.id]) for h in hits if h.id in rows]
    for rank, m in enumerate(matches, 1):
        m.rank = rank
    timings = plan.finish()
    # Per-stage timings in the log, so a slow request explains itself.
    log.info("search %s top_k=%d hits=%d %s", plan.collection, plan.top_k, len(matches), timings)
    return SearchOutcome(plan.name, plan.encoder.model_name, matches, timings)


def _finish_fused(svc: Services, plan: _Plan, hits: list[Hit]) -> SearchOutcome:
    """Text and hybrid modes: fuse the CLIP and OCR rankings by RRF (see operations.fusion).

    `min_score` applies to the CLIP ranking only: a text match is kept whatever its cosine.
    """
    s = svc.settings
    rankings: dict[str, list[int]] = {"text": [m.image_id for m in plan.text_hits]}
    if plan.mode == "hybrid":
        rankings["visual"] = [h.id for h in hits]
    fused = rrf(rankings, {"visual": s.search_weight_visual, "text": s.search_weight_text}, s.search_rrf_k)
    fused = fused[: plan.top_k]
    t = time.perf_counter()
    ids = [f.image_id for f in fused]
    rows = svc.images.get_rows(plan.collection, ids, with_image=plan.with_image) if ids else {}
    plan.timer.stage("image_fetch", t)
    scores = {h.id: h.score for h in hits}
    missing = [i for i in ids if i not in scores]
    if missing and plan.query_vector is not None:
        # Images found by their text alone: their cosine, from their stored vector.
        stored = svc.vectors.get_vectors(plan.collection, missing)
        for image_id, vec in stored.items():
            scores[image_id] = float(np.dot(np.asarray(vec, dtype=np.float32), plan.query_vector))
    lines = {m.image_id: m.line for m in plan.text_hits}
    matches = [
        Match(
            0,
            scores.get(f.image_id, 0.0),
            rows[f.image_id],
            tuple(sorted(f.signals, key=("visual", "text").index)),
            round(f.score, 6),
            lines.get(f.image_id),
        )
        for f in fused
        if f.image_id in rows
    ]
    for rank, m in enumerate(matches, 1):
        m.rank = rank
    timings = plan.finish()
    log.info(
        "search %s mode=%s top_k=%d hits=%d %s", plan.collection, plan.mode, plan.top_k, len(matches), timings
    )
    return SearchOutcome(plan.name, plan.encoder.model_name, matches, timings)


def _text_stage(svc: Services, plan: _Plan, query: str) -> None:
    """The OCR text ranking of a text/hybrid search, narrowed by the caller's filter."""
    t = time.perf_counter()
    found = text_matches(svc, plan.collection, query, svc.settings.ocr_text_candidates)
    user_filter = plan.flt
    if found and user_filter is not None and not user_filter.is_empty():
        rows = svc.images.get_rows(plan.collection, [m.image_id for m in found])
        found = [
            m
            for m in found
            if m.image_id in rows
            and user_filter.matches(
                m.image_id,
                VectorAttrs(rows[m.image_id].source, rows[m.image_id].tags, rows[m.image_id].created_at),
            )
        ]
    plan.text_hits = found[: plan.top_k]
    plan.timer.stage("text_search", t)


def _search_future(svc: Services, plan: _Plan, vector: np.ndarray) -> Future | Timed | None:
    plan.timer.ms.setdefault("vector_search", 0.0)
    plan.query_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if plan.nothing or plan.mode == "text":
        return None
    return svc.serving.search(plan.collection, vector, plan.top_k, plan.flt)


def _check_query(svc: Services, query: str) -> None:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput("query must be a non-empty string")
    if len(query) > svc.settings.max_query_chars:
        raise InvalidInput(f"query is {len(query)} characters; the limit is {svc.settings.max_query_chars}")


def _prepare_text(
    svc: Services,
    collection,
    query,
    top_k,
    flt,
    min_score,
    with_image,
    mode=None,
    timer: _Timer | None = None,
) -> _Plan:
    _check_top_k(top_k)
    _check_query(svc, query)
    if mode is not None and mode not in MODES:
        raise InvalidInput(f"mode must be one of {MODES}")
    plan = _plan(svc, collection, top_k, flt, min_score, with_image, timer)
    plan.encoder.check_text(query)
    # Default: both signals where the collection's text is read, CLIP alone elsewhere.
    plan.mode = mode or ("hybrid" if ocr_enabled(svc, plan.collection) else "visual")
    if plan.mode != "visual":
        _text_stage(svc, plan, query)
    return _resolve_filter(svc, plan)


def _prepare_image(
    svc: Services, collection, data, image_id, top_k, flt, min_score, with_image, timer: _Timer | None = None
) -> _Plan:
    _check_top_k(top_k)
    if (data is None) == (image_id is None):
        raise InvalidInput("give either an image upload or an image_id, not both")
    plan = _plan(svc, collection, top_k, flt, min_score, with_image, timer)
    plan.kind = "image"
    t = time.perf_counter()
    if data is not None:
        plan.image = check_image(data, svc.settings.max_upload_bytes, svc.settings.max_image_pixels).image
        plan.timer.stage("decode", t)
    else:
        image_id = int(image_id)
        vectors = svc.vectors.get_vectors(plan.collection, [image_id])
        if image_id not in vectors:
            raise NotFound(f"image {image_id} is not in collection {collection!r}", image_id=image_id)
        plan.vector = vectors[image_id]
        base = flt or SearchFilter()
        plan.flt = SearchFilter(
            base.sources,
            base.tags,
            base.created_from,
            base.created_to,
            tuple(base.exclude_ids) + (image_id,),
            base.only_ids,
        )
        plan.timer.stage("encode", t)
    return _resolve_filter(svc, plan)


def resolved(pending: Future | Timed) -> Timed:
    """What the serving layer gave: at once from a cache, else once its batch has run."""
    return pending if isinstance(pending, Timed) else pending.result()


async def _await(pending: Future | Timed) -> Timed:
    return pending if isinstance(pending, Timed) else await asyncio.wrap_future(pending)


def search_text(
    svc: Services,
    collection: str,
    query: str,
    top_k: int = 10,
    flt: SearchFilter | None = None,
    min_score: float | None = None,
    with_image: bool = False,
    mode: str | None = None,
) -> SearchOutcome:
    """以文搜图: the images that best match a Chinese sentence.

    mode: "visual" (CLIP), "text" (the text read in the images contains the
    query) or "hybrid" (both rankings fused); None = hybrid on a collection
    with OCR, visual otherwise.
    """
    plan = _prepare_text(svc, collection, query, top_k, flt, min_score, with_image, mode)
    vector = _take(resolved(svc.serving.encode_text(plan.encoder, query)), plan, "encode")
    pending = _search_future(svc, plan, vector)
    hits = _take(resolved(pending), plan, "vector_search") if pending else []
    return _finish(svc, plan, hits)


async def search_text_async(
    svc: Services,
    collection: str,
    query: str,
    top_k: int = 10,
    flt: SearchFilter | None = None,
    min_score: float | None = None,
    with_image: bool = False,
    mode: str | None = None,
) -> SearchOutcome:
    """`search_text` for the event loop: blocking stages on the worker pool, batches awaited."""
    # The clock starts here, so waiting for a worker thread counts in `total`.
    plan = await anyio.to_thread.run_sync(
        _prepare_text, svc, collection, query, top_k, flt, min_score, with_image, mode, _Timer()
    )
    vector = _take(await _await(svc.serving.encode_text(plan.encoder, query)), plan, "encode")
    pending = _search_future(svc, plan, vector)
    hits = _take(await _await(pending), plan, "vector_search") if pending else []
    return await anyio.to_thread.run_sync(_finish, svc, plan, hits)


def _image_vector_pending(svc: Services, plan: _Plan) -> Future | Timed:
    if plan.vector is not None:
        return Timed(plan.vector, 0.0, 0.0, 0)
    return svc.serving.encode_image(plan.encoder, plan.image)


def search_image(
    svc: Services,
    collection: str,
    *,
    data: bytes | None = None,
    image_id: int | None = None,
    top_k: int = 10,
    flt: SearchFilter | None = None,
    min_score: float | None = None,
    with_image: bool = False,
) -> SearchOutcome:
    """以图搜图: images similar to an uploaded photo or to a stored image.

    A stored image is left out of its own results.
    """
    plan = _prepare_image(svc, collection, data, image_id, top_k, flt, min_score, with_image)
    vector = _take(resolved(_image_vector_pending(svc, plan)), plan, "encode")
    pending = _search_future(svc, plan, vector)
    hits = _take(resolved(pending), plan, "vector_search") if pending else []
    return _finish(svc, plan, hits)


async def search_image_async(
    svc: Services,
    collection: str,
    *,
    data: bytes | None = None,
    image_id: int | None = None,
    top_k: int = 10,
    flt: SearchFilter | None = None,
    min_score: float | None = None,
    with_image: bool = False,
) -> SearchOutcome:
    """`search_image` for the event loop (see `search_text_async`)."""
    plan = await anyio.to_thread.run_sync(
        _prepare_image, svc, collection, data, image_id, top_k, flt, min_score, with_image, _Timer()
    )
    vector = _take(await _await(_image_vector_pending(svc, plan)), plan, "encode")
    pending = _search_future(svc, plan, vector)
    hits = _take(await _await(pending), plan, "vector_search") if pending else []
    return await anyio.to_thread.run_sync(_finish, svc, plan, hits)
