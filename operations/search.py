"""Search by text or by image; one result shape for both."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from operations.context import Services
from operations.domain import ImageRow, SearchFilter
from operations.errors import InvalidInput, NotFound
from operations.images import check_image
from operations.vector_filter import filter_for_vectors

# The most results one search returns to a caller (API, CLI); the stores' own cap is
# operations.stores.vector_base.MAX_STORE_HITS.
MAX_SEARCH_TOP_K = 100
log = logging.getLogger(__name__)


@dataclass
class Match:
    rank: int
    score: float
    row: ImageRow


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

    def finish(self) -> dict[str, float]:
        self.ms["total"] = round((time.perf_counter() - self._t0) * 1000, 2)
        return self.ms


def _check_top_k(top_k: int) -> None:
    if not isinstance(top_k, int) or not 1 <= top_k <= MAX_SEARCH_TOP_K:
        raise InvalidInput(f"top_k must be an integer in 1..{MAX_SEARCH_TOP_K}")


def search_vector(
    svc: Services,
    collection: str,
    vector: np.ndarray,
    top_k: int,
    flt: SearchFilter | None,
    min_score: float | None,
    with_image: bool,
    timer: _Timer,
    model: str,
) -> SearchOutcome:
    """Nearest images to `vector`, best first, joined with their SQL rows."""
    t = time.perf_counter()
    flt, nothing = filter_for_vectors(svc, collection, flt)
    hits = [] if nothing else svc.vectors.search(collection, vector[None, :], top_k, flt)[0]
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    timer.stage("vector_search", t)
    t = time.perf_counter()
    rows = svc.images.get_rows(collection, [h.id for h in hits], with_image=with_image) if hits else {}
    timer.stage("image_fetch", t)
    # A vector whose row is gone (a delete interrupted between the stores) is
    # never shown: the row is the source of truth for what exists.
    matches = [Match(0, h.score, rows[h.id]) for h in hits if h.id in rows]
    for rank, m in enumerate(matches, 1):
        m.rank = rank
    timings = timer.finish()
    # Per-stage timings in the log, so a slow request explains itself.
    log.info("search %s top_k=%d hits=%d %s", collection, top_k, len(matches), timings)
    return SearchOutcome(collection, model, matches, timings)


def search_text(
    svc: Services,
    collection: str,
    query: str,
    top_k: int = 10,
    flt: SearchFilter | None = None,
    min_score: float | None = None,
    with_image: bool = False,
) -> SearchOutcome:
    """以文搜图: the images that best match a Chinese sentence."""
    _check_top_k(top_k)
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput("query must be a non-empty string")
    if len(query) > svc.settings.max_query_chars:
        raise InvalidInput(f"query is {len(query)} characters; the limit is {svc.settings.max_query_chars}")
    timer = _Timer()
    encoder = svc.encoder_for(collection)
    encoder.check_text(query)
    t = time.perf_counter()
    vector = encoder.encode_texts([query])[0]
    timer.stage("encode", t)
    return search_vector(
        svc, collection, vector, top_k, flt, min_score, with_image, timer, encoder.model_name
    )


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
    _check_top_k(top_k)
    if (data is None) == (image_id is None):
        raise InvalidInput("give either an image upload or an image_id, not both")
    timer = _Timer()
    encoder = svc.encoder_for(collection)
    t = time.perf_counter()
    if data is not None:
        checked = check_image(data, svc.settings.max_upload_bytes, svc.settings.max_image_pixels)
        vector = encoder.encode_images([checked.image])[0]
    else:
        vectors = svc.vectors.get_vectors(collection, [int(image_id)])  # type: ignore[arg-type]
        if int(image_id) not in vectors:  # type: ignore[arg-type]
            raise NotFound(f"image {image_id} is not in collection {collection!r}", image_id=image_id)
        vector = vectors[int(image_id)]  # type: ignore[arg-type]
        base = flt or SearchFilter()
        flt = SearchFilter(
            base.sources,
            base.tags,
            base.created_from,
            base.created_to,
            tuple(base.exclude_ids) + (int(image_id),),
        )  # type: ignore[arg-type]
    timer.stage("encode", t)
    return search_vector(
        svc, collection, vector, top_k, flt, min_score, with_image, timer, encoder.model_name
    )
