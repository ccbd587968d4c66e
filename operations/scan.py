"""Risk scan: every stored image close to any of a list of descriptions.

A compliance back-check over the whole library, so it uses Milvus range
search (all hits above a threshold) rather than a top-k. On a collection with
OCR it also takes patterns for the text read in the images (built-ins or
regular expressions, operations.text_patterns): their hits follow the CLIP
hits, by image id, with signal "ocr", the pattern and the matched text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from operations.context import Services
from operations.domain import SearchFilter
from operations.errors import InvalidInput
from operations.ocr_scan import OcrScanStats, iter_ocr_hits
from operations.stores.vector_base import MAX_STORE_HITS
from operations.text_patterns import TextPattern, compile_patterns
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
    signal: str = "visual"  # visual: a CLIP description; ocr: a pattern in the text read in the image
    matched_text: str = ""  # ocr: the text the pattern matched


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
    ocr_timed_out: int = 0  # (pattern, line) searches that gave up at OCR_REGEX_TIMEOUT_MS


def scan(
    svc: Services,
    collection: str,
    descriptions: list[str],
    threshold: float,
    flt: SearchFilter | None = None,
    offset: int = 0,
    limit: int = 100,
    ocr_patterns: list[dict] | None = None,
) -> ScanOutcome:
    """All (image, description) pairs with similarity >= threshold, best first, then the
    (image, OCR pattern) matches by image id.

    Pagination is over that list; `total` counts all pairs.
    """
    patterns = compile_patterns(ocr_patterns or [])
    if len(descriptions) > MAX_DESCRIPTIONS or not (descriptions or patterns):
        raise InvalidInput(f"give 1..{MAX_DESCRIPTIONS} descriptions, or OCR patterns")
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
    vectors = encoder.encode_texts(descriptions) if descriptions else []
    flt_user = flt
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
    stats = OcrScanStats()
    if patterns:
        hits.extend(ocr_scan_hits(svc, collection, patterns, len(descriptions), flt_user, stats))
    page = hits[offset : offset + limit]
    rows = svc.images.get_rows(collection, [h.image_id for h in page]) if page else {}
    page = [h for h in page if h.image_id in rows]
    for h in page:
        h.source, h.created_at = rows[h.image_id].source, rows[h.image_id].created_at
    return ScanOutcome(
        collection, encoder.model_name, threshold, len(hits), offset, limit, truncated, page, stats.timed_out
    )


def ocr_scan_hits(
    svc: Services,
    collection: str,
    patterns: list[TextPattern],
    first_index: int,
    flt: SearchFilter | None,
    stats: OcrScanStats,
) -> Iterator[ScanHit]:
    """The OCR patterns' matches as scan rows: description_index counts on after the descriptions,
    score is the confidence of the line read."""
    for h in iter_ocr_hits(svc, collection, patterns, flt, stats):
        yield ScanHit(
            h.image_id,
            round(h.confidence, 6),
            first_index + h.pattern_index,
            h.pattern,
            h.source,
            h.created_at,
            "ocr",
            h.matched_text,
        )


def to_csv(outcome: ScanOutcome) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(ScanHit.__dataclass_fields__))
    writer.writeheader()
    for h in outcome.hits:
        writer.writerow(asdict(h))
    return out.getvalue()


def to_jsonl(outcome: ScanOutcome) -> str:
    return "".join(json.dumps(asdict(h), ensure_ascii=False) + "\n" for h in outcome.hits)
