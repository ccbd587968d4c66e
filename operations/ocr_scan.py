"""The OCR half of a risk scan: every image whose recognised text matches a pattern.

It pages through the collection's OCR records in image id order (PAGE at a
time), so memory stays flat whatever the collection's size; each line of each
image is matched by every pattern under its timeout (operations.text_patterns).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from operations.context import Services
from operations.domain import SearchFilter, VectorAttrs
from operations.errors import Conflict
from operations.ocr import ocr_store
from operations.stores.sql_ocr_store import SqlOcrStore
from operations.text_patterns import TextPattern, find_in_line

PAGE = 500


@dataclass
class OcrHit:
    """One (image, pattern) match: the matched text, its line and the line's confidence."""

    image_id: int
    pattern_index: int
    pattern: str
    matched_text: str
    line: str
    confidence: float
    source: str = ""
    created_at: int = 0


@dataclass
class OcrScanStats:
    """Counted while the scan runs: images checked, (pattern, line) searches that timed out."""

    images: int = 0
    timed_out: int = 0
    extra: dict = field(default_factory=dict)


def require_ocr(svc: Services, collection: str) -> SqlOcrStore:
    """The OCR store, if `collection` has OCR on; otherwise a Conflict naming the call that turns
    it on. A streamed scan calls this before its response starts (operations.scan.plan_scan)."""
    store = ocr_store(svc)
    if not store.enabled(collection):
        raise Conflict(
            f"OCR is not enabled for collection {collection!r}: POST /img/collections/{collection}/ocr",
            collection=collection,
        )
    return store


def iter_ocr_hits(
    svc: Services,
    collection: str,
    patterns: list[TextPattern],
    flt: SearchFilter | None = None,
    stats: OcrScanStats | None = None,
) -> Iterator[OcrHit]:
    """Every match of `patterns` in the text of `collection`'s images, by image id, then pattern.

    One hit per (image, pattern): the first matching line (best confidence first).
    """
    store = require_ocr(svc, collection)
    stats = stats or OcrScanStats()
    timeout_s = svc.settings.ocr_regex_timeout_ms / 1000
    after = 0
    while records := store.page(collection, after, PAGE):
        after = records[-1].image_id
        found: list[OcrHit] = []
        for record in records:
            stats.images += 1
            seen: set[int] = set()
            for line in sorted(record.lines, key=lambda x: -x.confidence):
                matches, timed_out = find_in_line(patterns, line.text, timeout_s)
                stats.timed_out += timed_out
                for m in matches:
                    if m.pattern_index in seen:
                        continue
                    seen.add(m.pattern_index)
                    found.append(
                        OcrHit(
                            record.image_id,
                            m.pattern_index,
                            patterns[m.pattern_index].label,
                            m.matched,
                            line.text,
                            line.confidence,
                        )
                    )
        if not found:
            continue
        rows = svc.images.get_rows(collection, sorted({h.image_id for h in found}))
        for h in sorted(found, key=lambda h: (h.image_id, h.pattern_index)):
            row = rows.get(h.image_id)
            if row is None:
                continue  # deleted meanwhile
            if flt is not None and not flt.matches(
                h.image_id, VectorAttrs(row.source, row.tags, row.created_at)
            ):
                continue
            h.source, h.created_at = row.source, row.created_at
            yield h
