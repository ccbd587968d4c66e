"""Risk scan: every stored image close to any of a list of descriptions.

A compliance back-check over the whole library, so it uses Milvus range
search (all hits above a threshold) rather than a top-k, and it has no cap:
one Milvus search returns at most MAX_STORE_HITS (16,384) hits, so each
description's matches are read page by page (`VectorStore.range_pages`: on a
Milvus server by score, each page asking for scores at or below the lowest of
the page before; see milvus_store.py for Milvus Lite).

Rows stream: the descriptions' pages are merged best first (`heapq.merge`),
SQL rows are fetched a batch at a time, and CSV/JSONL are written as they
come, so memory holds a page per description whatever the number of matches.

On a collection with OCR a scan also takes patterns for the text read in the
images (built-ins or regular expressions, operations.text_patterns): their hits
follow the CLIP hits, by image id, with signal "ocr", the pattern and the
matched text.
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from operations.context import Services
from operations.domain import Hit, SearchFilter
from operations.errors import InvalidInput
from operations.ocr_scan import OcrScanStats, iter_ocr_hits, require_ocr
from operations.stores.vector_base import MAX_STORE_HITS, VectorStore
from operations.text_patterns import TextPattern, compile_patterns
from operations.vector_filter import filter_for_vectors

MAX_DESCRIPTIONS = 50
# SQL rows (source, created_at) are fetched this many hits at a time.
ROW_BATCH = 1000


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
    hits: list[ScanHit]
    ocr_timed_out: int = 0  # (pattern, line) searches that gave up at OCR_REGEX_TIMEOUT_MS


@dataclass
class ScanPlan:
    """A validated scan, ready to stream (`hits`). Built by `plan_scan` before any
    response starts, so bad input and an unreachable store fail as a status."""

    svc: Services
    collection: str
    model: str
    descriptions: list[str]
    vectors: np.ndarray
    threshold: float
    flt: SearchFilter | None
    nothing: bool
    page_size: int
    patterns: list[TextPattern] = dataclasses.field(default_factory=list)
    user_filter: SearchFilter | None = None  # the OCR patterns' filter, before filter_for_vectors
    ocr_stats: OcrScanStats = dataclasses.field(default_factory=OcrScanStats)

    def hits(self) -> Iterator[ScanHit]:
        """Every (image, description) pair at or above the threshold, best first
        (score descending, then image id, then description), then the OCR pattern
        matches by image id."""
        if not self.nothing:
            streams = [self._keyed(i, vec) for i, vec in enumerate(self.vectors)]
            yield from self._with_rows(heapq.merge(*streams))
        if self.patterns:
            yield from ocr_scan_hits(
                self.svc,
                self.collection,
                self.patterns,
                len(self.descriptions),
                self.user_filter,
                self.ocr_stats,
            )

    def _keyed(self, index: int, vector: np.ndarray) -> Iterator[tuple[float, int, int]]:
        for h in iter_matches(
            self.svc.vectors, self.collection, vector, self.threshold, self.flt, self.page_size
        ):
            yield -h.score, h.id, index

    def _with_rows(self, merged: Iterator[tuple[float, int, int]]) -> Iterator[ScanHit]:
        # A vector whose SQL row is gone (a delete between the two stores) is left out.
        while batch := list(itertools.islice(merged, ROW_BATCH)):
            rows = self.svc.images.get_rows(self.collection, list({b[1] for b in batch}))
            for neg_score, image_id, i in batch:
                row = rows.get(image_id)
                if row is not None:
                    yield ScanHit(
                        image_id, round(-neg_score, 6), i, self.descriptions[i], row.source, row.created_at
                    )


def iter_matches(
    store: VectorStore,
    collection: str,
    vector: np.ndarray,
    threshold: float,
    flt: SearchFilter | None,
    page_size: int = MAX_STORE_HITS,
) -> Iterator[Hit]:
    """Every hit with score >= threshold, best first, in range searches of `page_size`."""
    for page in store.range_pages(collection, vector, threshold, page_size, flt):
        yield from page


def plan_scan(
    svc: Services,
    collection: str,
    descriptions: list[str],
    threshold: float,
    flt: SearchFilter | None = None,
    ocr_patterns: list[dict] | None = None,
) -> ScanPlan:
    """Validate and encode a scan; its rows come from `ScanPlan.hits()`."""
    patterns = compile_patterns(ocr_patterns or [])
    if len(descriptions) > MAX_DESCRIPTIONS or not (descriptions or patterns):
        raise InvalidInput(f"give 1..{MAX_DESCRIPTIONS} descriptions, or OCR patterns")
    if not -1.0 <= threshold <= 1.0:
        raise InvalidInput("threshold is a cosine similarity in -1..1")
    # Resolved once (operations.aliases): the encoder and every page of one collection.
    collection = svc.store_name(collection)
    encoder = svc.encoder_for(collection)
    for text in descriptions:
        if not isinstance(text, str) or len(text) > svc.settings.max_query_chars:
            raise InvalidInput(
                f"each description is a string of at most {svc.settings.max_query_chars} characters"
            )
        encoder.check_text(text)
    vectors = encoder.encode_texts(descriptions) if descriptions else np.zeros((0, encoder.dim), np.float32)
    user_filter = flt
    flt, nothing = filter_for_vectors(svc, collection, flt)
    if not nothing:
        svc.vectors.describe_meta(collection)  # a missing collection is a 404 before streaming
    if patterns:
        # Checked here, not when the OCR rows' turn comes: by then a streamed export has sent
        # its headers and the CLIP rows, and an error could only cut the stream.
        require_ocr(svc, collection)
    return ScanPlan(
        svc,
        collection,
        encoder.model_name,
        list(descriptions),
        vectors,
        threshold,
        flt,
        nothing,
        svc.settings.scan_page_size,
        patterns,
        user_filter,
    )


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
    """One page of all (image, description) pairs with similarity >= threshold, best first,
    then the (image, OCR pattern) matches by image id.

    `total` counts every pair: the whole stream is read (without keeping it).
    """
    if offset < 0 or not 1 <= limit <= 10_000:
        raise InvalidInput("offset must be >= 0 and limit in 1..10000")
    plan = plan_scan(svc, collection, descriptions, threshold, flt, ocr_patterns)
    page: list[ScanHit] = []
    total = 0
    for hit in plan.hits():
        if offset <= total < offset + limit:
            page.append(hit)
        total += 1
    return ScanOutcome(
        collection, plan.model, threshold, total, offset, limit, page, plan.ocr_stats.timed_out
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


FIELDS = list(ScanHit.__dataclass_fields__)


def csv_lines(hits: Iterator[ScanHit]) -> Iterator[str]:
    """CSV text, a header and then one chunk per row, as the rows come."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS)
    writer.writeheader()
    for h in hits:
        writer.writerow(asdict(h))
        if out.tell() > 64 * 1024:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def jsonl_lines(hits: Iterator[ScanHit]) -> Iterator[str]:
    """JSON Lines, one object per row, as the rows come (in chunks of about 64 KB)."""
    chunk: list[str] = []
    size = 0
    for h in hits:
        line = json.dumps(asdict(h), ensure_ascii=False) + "\n"
        chunk.append(line)
        size += len(line)
        if size > 64 * 1024:
            yield "".join(chunk)
            chunk, size = [], 0
    yield "".join(chunk)


def to_csv(outcome: ScanOutcome) -> str:
    return "".join(csv_lines(iter(outcome.hits)))


def to_jsonl(outcome: ScanOutcome) -> str:
    return "".join(jsonl_lines(iter(outcome.hits)))
