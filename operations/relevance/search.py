"""Search with relevance: the query language, text plus image, feedback, the cut and the order.

A plain text query (wanted words only, no image, no feedback) goes through the ordinary text
search (`operations.search`), batching and caching included, and is only annotated and cut
here. Any other query is composed here: its texts are encoded in one call of the encoder (the
parts of one query form one batch), its stored vectors read in one call, and the composed
vector searched directly; such queries are rarer and their vector is not a cacheable text.

Results of a composed query are searched with an oversampled candidate list when unwanted
terms may remove some, then cut to top_k. `positive_ids` / `negative_ids` and a query
`image_id` never appear in their own results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio
import numpy as np

from operations import metrics
from operations.context import Services
from operations.domain import SearchFilter, check_int64
from operations.errors import InvalidInput, NotFound
from operations.images import check_image
from operations.relevance.compose import QueryParts, Weights, closer_to_unwanted, compose, positive_text
from operations.relevance.cutoff import CutOptions, RelevanceReport, apply_cut
from operations.relevance.query import ParsedQuery, parse_query
from operations.search import (
    MAX_SEARCH_TOP_K,
    Match,
    SearchOutcome,
    resolved,
    search_image,
    search_image_async,
    search_text,
    search_text_async,
)
from operations.stores.vector_base import MAX_STORE_HITS
from operations.vector_filter import filter_for_vectors

log = logging.getLogger(__name__)
MAX_FEEDBACK_IDS = 50
NO_TEXT = "relevance is calibrated for text queries; this query has no wanted text"
# Candidates searched per result wanted when unwanted terms may remove results.
NEGATIVE_OVERSAMPLE = 4


@dataclass(frozen=True)
class RelevanceQuery:
    """Everything a relevance search may be given (the API's and the CLI's fields)."""

    query: str = ""
    top_k: int = 10
    flt: SearchFilter | None = None
    min_score: float | None = None
    with_image: bool = False
    image: bytes | None = None
    image_id: int | None = None
    positive_ids: tuple[int, ...] = ()
    negative_ids: tuple[int, ...] = ()
    cut: CutOptions = field(default_factory=CutOptions)
    # visual / text / hybrid (text in images, operations.search); a plain text query only.
    # None: hybrid on a collection with OCR, else visual.
    mode: str | None = None


def _weights(svc: Services) -> Weights:
    s = svc.settings
    return Weights(
        s.negative_term_weight,
        s.feedback_positive_weight,
        s.feedback_negative_weight,
        s.query_image_weight,
        s.negative_term_weight_no_text,
    )


def _check(svc: Services, rq: RelevanceQuery) -> ParsedQuery:
    if not isinstance(rq.top_k, int) or not 1 <= rq.top_k <= MAX_SEARCH_TOP_K:
        raise InvalidInput(f"top_k must be an integer in 1..{MAX_SEARCH_TOP_K}")
    if rq.image is not None and rq.image_id is not None:
        raise InvalidInput("give either an image upload or an image_id, not both")
    for ids, what in ((rq.positive_ids, "positive_ids"), (rq.negative_ids, "negative_ids")):
        if len(ids) > MAX_FEEDBACK_IDS:
            raise InvalidInput(f"{what} holds at most {MAX_FEEDBACK_IDS} ids")
        for i in ids:
            check_int64(i, what)
    both = set(rq.positive_ids) & set(rq.negative_ids)
    if both:
        raise InvalidInput(f"ids {sorted(both)} are in both positive_ids and negative_ids")
    if rq.image_id is not None:
        check_int64(rq.image_id, "image_id")
    if len(rq.query) > svc.settings.max_query_chars:
        raise InvalidInput(
            f"query is {len(rq.query)} characters; the limit is {svc.settings.max_query_chars}"
        )
    has_other = rq.image is not None or rq.image_id is not None or bool(rq.positive_ids)
    if rq.mode not in (None, "visual", "text", "hybrid"):
        raise InvalidInput('mode must be "visual", "text" or "hybrid"')
    if not rq.query.strip():
        if not has_other:
            raise InvalidInput("query must be a non-empty string (or give an image or positive_ids)")
        return ParsedQuery(())
    return parse_query(rq.query, allow_no_positive=has_other)


def relevance_search(
    svc: Services, collection: str, rq: RelevanceQuery
) -> tuple[SearchOutcome, RelevanceReport]:
    """Search, then relevance, cut and order (see `operations.relevance.cutoff`)."""
    parsed = _check(svc, rq)
    rq.cut.check()
    if _is_plain_text(parsed, rq):
        outcome = search_text(
            svc, collection, rq.query, rq.top_k, rq.flt, rq.min_score, rq.with_image, rq.mode
        )
        return _annotate(svc, outcome, rq, None, "")
    _visual_only(rq)
    if _is_plain_image(parsed, rq):
        outcome = search_image(
            svc,
            collection,
            data=rq.image,
            image_id=rq.image_id,
            top_k=rq.top_k,
            flt=rq.flt,
            min_score=rq.min_score,
            with_image=rq.with_image,
        )
        return _annotate(svc, outcome, rq, None, NO_TEXT)
    return _composed(svc, collection, rq, parsed)


async def relevance_search_async(
    svc: Services, collection: str, rq: RelevanceQuery
) -> tuple[SearchOutcome, RelevanceReport]:
    """`relevance_search` for the event loop: a plain query awaits the batchers, a composed
    one runs on the worker pool."""
    parsed = _check(svc, rq)
    rq.cut.check()
    with svc.serving.admit():
        return await _relevance_search_admitted(svc, collection, rq, parsed)


async def _relevance_search_admitted(
    svc: Services, collection: str, rq: RelevanceQuery, parsed: ParsedQuery
) -> tuple[SearchOutcome, RelevanceReport]:
    if _is_plain_text(parsed, rq):
        outcome = await search_text_async(
            svc, collection, rq.query, rq.top_k, rq.flt, rq.min_score, rq.with_image, rq.mode
        )
        return await anyio.to_thread.run_sync(_annotate, svc, outcome, rq, None, "")
    _visual_only(rq)
    if _is_plain_image(parsed, rq):
        outcome = await search_image_async(
            svc,
            collection,
            data=rq.image,
            image_id=rq.image_id,
            top_k=rq.top_k,
            flt=rq.flt,
            min_score=rq.min_score,
            with_image=rq.with_image,
        )
        return await anyio.to_thread.run_sync(_annotate, svc, outcome, rq, None, NO_TEXT)
    return await anyio.to_thread.run_sync(_composed, svc, collection, rq, parsed)


def _visual_only(rq: RelevanceQuery) -> None:
    """The text in images (OCR) is matched for a plain text query only: the other kinds
    (terms, an image, feedback) compose a vector, which has no text to look for."""
    if rq.mode in ("text", "hybrid"):
        raise InvalidInput(
            f'mode "{rq.mode}" needs a plain text query (no -terms, weights, image or feedback)'
        )


def _is_plain_text(parsed: ParsedQuery, rq: RelevanceQuery) -> bool:
    no_image = rq.image is None and rq.image_id is None
    return bool(
        parsed.is_plain and parsed.positives and no_image and not rq.positive_ids and not rq.negative_ids
    )


def _is_plain_image(parsed: ParsedQuery, rq: RelevanceQuery) -> bool:
    return not parsed.terms and not rq.positive_ids and not rq.negative_ids


def _annotate(
    svc: Services, outcome: SearchOutcome, rq: RelevanceQuery, basis: dict[int, float] | None, why_none: str
) -> tuple[SearchOutcome, RelevanceReport]:
    state = svc.calibration_of(outcome.model)
    calibration, note = state.calibration, state.reason
    if calibration is not None and why_none:
        calibration, note = None, why_none
    outcome.matches, report = apply_cut(outcome.matches, rq.cut, calibration, note, basis)
    return outcome, report


def _composed(
    svc: Services, collection: str, rq: RelevanceQuery, parsed: ParsedQuery
) -> tuple[SearchOutcome, RelevanceReport]:
    t0 = time.perf_counter()
    ms: dict[str, float] = {}
    # Resolved once (operations.aliases): the encoder, searches and rows of one collection.
    name, collection = collection, svc.store_name(collection)
    encoder = svc.encoder_for(collection)
    texts = parsed.positive_texts() + [(t.text, t.weight) for t in parsed.negatives]
    for text, _ in texts:
        encoder.check_text(text)
    parts = QueryParts()
    exclude = set(rq.positive_ids) | set(rq.negative_ids)
    t = time.perf_counter()
    # Through the serving layer, as plain searches: each text is looked up in the query
    # cache and batched with the other requests' queries (all of this one's in one pass).
    checked = (
        check_image(rq.image, svc.settings.max_upload_bytes, svc.settings.max_image_pixels)
        if rq.image is not None
        else None
    )
    pending = [svc.serving.encode_text(encoder, text) for text, _ in texts]
    if checked is not None:
        parts.image = resolved(svc.serving.encode_image(encoder, checked.image)).value
    if texts:
        vecs = [resolved(p).value for p in pending]
        n_pos = len(parsed.positive_texts())
        parts.positives = [(vecs[i], w) for i, (_, w) in enumerate(texts[:n_pos])]
        parts.negatives = [(vecs[n_pos + i], w) for i, (_, w) in enumerate(texts[n_pos:])]
    stored_ids = list(rq.positive_ids) + list(rq.negative_ids)
    if rq.image_id is not None:
        stored_ids.append(int(rq.image_id))
        exclude.add(int(rq.image_id))
    if stored_ids:
        stored = svc.vectors.get_vectors(collection, stored_ids)
        missing = [i for i in stored_ids if i not in stored]
        if missing:
            raise NotFound(f"images {missing} are not in collection {collection!r}", image_ids=missing)
        if rq.image_id is not None:
            parts.image = stored[int(rq.image_id)]
        parts.feedback_positive = [stored[i] for i in rq.positive_ids]
        parts.feedback_negative = [stored[i] for i in rq.negative_ids]
    query = compose(parts, _weights(svc))
    ms["encode"] = round((time.perf_counter() - t) * 1000, 2)

    t = time.perf_counter()
    base = rq.flt or SearchFilter()
    flt = SearchFilter(
        base.sources,
        base.tags,
        base.created_from,
        base.created_to,
        tuple(base.exclude_ids) + tuple(sorted(exclude)),
        base.only_ids,
    )
    flt_checked, nothing = filter_for_vectors(svc, collection, flt if not flt.is_empty() else None)
    wanted = positive_text(parts)
    k = rq.top_k * NEGATIVE_OVERSAMPLE if parts.negatives and wanted is not None else rq.top_k
    hits = (
        []
        if nothing
        else svc.vectors.search(collection, query[None, :], min(k, MAX_STORE_HITS), flt_checked)[0]
    )
    if rq.min_score is not None:
        hits = [h for h in hits if h.score >= rq.min_score]
    basis: dict[int, float] | None = None
    if wanted is not None and hits:
        vectors = svc.vectors.get_vectors(collection, [h.id for h in hits])
        hits = [h for h in hits if h.id in vectors]
        cand = np.stack([vectors[h.id] for h in hits]) if hits else np.zeros((0, len(query)), np.float32)
        drop = closer_to_unwanted(cand, wanted, [v for v, _ in parts.negatives])
        basis = {h.id: float(c @ wanted) for h, c in zip(hits, cand, strict=False)}
        hits = [h for h, d in zip(hits, drop, strict=False) if not d]
    hits = hits[: rq.top_k]
    ms["vector_search"] = round((time.perf_counter() - t) * 1000, 2)
    t = time.perf_counter()
    rows = svc.images.get_rows(collection, [h.id for h in hits], with_image=rq.with_image) if hits else {}
    ms["image_fetch"] = round((time.perf_counter() - t) * 1000, 2)
    matches = [Match(0, h.score, rows[h.id]) for h in hits if h.id in rows]
    for rank, m in enumerate(matches, 1):
        m.rank = rank
    ms["total"] = round((time.perf_counter() - t0) * 1000, 2)
    metrics.observe_search("composed", ms)
    log.info("relevance search %s top_k=%d hits=%d %s", collection, rq.top_k, len(matches), ms)
    outcome = SearchOutcome(name, encoder.model_name, matches, ms)
    why_none = (
        ""
        if wanted is not None
        else "relevance is calibrated for text queries; this query has no wanted text"
    )
    return _annotate(svc, outcome, rq, basis, why_none)
