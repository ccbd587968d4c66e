"""Risk scan: every stored image close to any of a list of descriptions.

A compliance back-check over the whole library, so it uses Milvus range
search (all hits above a threshold) rather than a top-k.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass

from operations.context import Services
from operations.domain import SearchFilter
from operations.errors import InvalidInput
from operations.stores.vector_base import MAX_STORE_HITS
from operations.vector_filter import filter_for_vectors

MAX_DESCRIPTIONS = 50


@dataclass
class ScanHit:
    image_id: int
    score: float
    description_index: int
    description: str
    source: str = ""
    created_at: int = 0


@dataclass
class ScanOutcome:
    collection: str
    model: str
    threshold: float
    total: int
    offset: int
    limit: int
    truncated: bool  # a description reached Milvus' per-search cap
    hits: list[ScanHit]


def scan(
    svc: Services,
    collection: str,
    descriptions: list[str],
    threshold: float,
    flt: SearchFilter | None = None,
    offset: int = 0,
    limit: int = 100,
) -> ScanOutcome:
    """All (image, description) pairs with similarity >= threshold, best first.

    Pagination is over that sorted list; `total` counts all pairs.
    """
    if not descriptions or len(descriptions) > MAX_DESCRIPTIONS:
        raise InvalidInput(f"give 1..{MAX_DESCRIPTIONS} descriptions")
    if not -1.0 <= threshold <= 1.0:
        raise InvalidInput("threshold is a cosine similarity in -1..1")
    if offset < 0 or not 1 <= limit <= 10_000:
        raise InvalidInput("offset must be >= 0 and limit in 1..10000")
    encoder = svc.encoder_for(collection)
    for text in descriptions:
        if not isinstance(text, str) or len(text) > svc.settings.max_query_chars:
            raise InvalidInput(
                f"each description is a string of at most {svc.settings.max_query_chars} characters"
            )
        encoder.check_text(text)
    vectors = encoder.encode_texts(descriptions)
    flt, nothing = filter_for_vectors(svc, collection, flt)
    hits: list[ScanHit] = []
    truncated = False
    for i, (text, vector) in enumerate(zip(descriptions, vectors)):
        found = (
            [] if nothing else svc.vectors.range_search(collection, vector, threshold, MAX_STORE_HITS, flt)
        )
        truncated |= len(found) >= MAX_STORE_HITS
        hits.extend(ScanHit(h.id, round(h.score, 6), i, text) for h in found)
    hits.sort(key=lambda h: (-h.score, h.image_id, h.description_index))
    page = hits[offset : offset + limit]
    rows = svc.images.get_rows(collection, [h.image_id for h in page]) if page else {}
    page = [h for h in page if h.image_id in rows]
    for h in page:
        h.source, h.created_at = rows[h.image_id].source, rows[h.image_id].created_at
    return ScanOutcome(collection, encoder.model_name, threshold, len(hits), offset, limit, truncated, page)


def to_csv(outcome: ScanOutcome) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(ScanHit.__dataclass_fields__))
    writer.writeheader()
    for h in outcome.hits:
        writer.writerow(asdict(h))
    return out.getvalue()


def to_jsonl(outcome: ScanOutcome) -> str:
    return "".join(json.dumps(asdict(h), ensure_ascii=False) + "\n" for h in outcome.hits)
