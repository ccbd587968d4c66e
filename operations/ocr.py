"""Text in images: turning OCR on for a collection, reading images, the backlog job, text search.

OCR is per collection (`ocr` on create, or later with `enable_ocr` and the
backlog job). A collection without it pays one catalogue query per add and
nothing else. Reading never decides whether an image is stored: an image that
cannot be read keeps its place, with a `failed` record and the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import cast

from PIL import Image

from operations.aliases import ResolvingStore
from operations.context import Services
from operations.errors import Conflict, NotFound, ServiceError
from operations.images import decode_b64_image
from operations.ocr_engine import OcrEngine, OcrOutcome
from operations.progress import Counter, Progress
from operations.stores.sql_ocr_store import OcrRecord, SqlOcrStore, TextMatch

log = logging.getLogger(__name__)
_lock = threading.Lock()
BACKLOG_BATCH = 16


def ocr_store(svc: Services) -> SqlOcrStore:
    """The OCR store beside the image store (the same SQL database and pool)."""
    store = svc.extra.get("ocr_store")
    if store is None:
        pool = getattr(svc.images, "pool", None)
        if pool is None:
            raise Conflict("OCR needs the SQL image store (MySQL or SQLite)")
        raw = SqlOcrStore(pool)
        # Collection names resolved like the image store's (operations.aliases).
        wrapped = raw if svc.aliases is None else cast(SqlOcrStore, ResolvingStore(raw, svc.aliases))
        store = svc.extra.setdefault("ocr_store", wrapped)
    return store


def ocr_engine(svc: Services) -> OcrEngine:
    """This process's OCR pool, built on first use."""
    with _lock:
        engine = svc.extra.get("ocr_engine")
        if engine is None:
            s = svc.settings
            engine = svc.extra["ocr_engine"] = OcrEngine(s.ocr_threads, s.ocr_queue, s.ocr_onnx_threads)
    return engine


def ocr_enabled(svc: Services, collection: str) -> bool:
    """Whether images of `collection` are read (False when the image store is not SQL)."""
    pool = getattr(svc.images, "pool", None)
    return pool is not None and ocr_store(svc).enabled(collection)


def enable_ocr(svc: Services, collection: str) -> None:
    """Turn OCR on for `collection`: images added from now on are read at add/load time."""
    svc.require_collection(collection)
    ocr_store(svc).enable(collection)


def store_outcome(svc: Services, collection: str, image_id: int, outcome: OcrOutcome) -> str | None:
    """Store one image's reading; returns the error to report (the read's or the store's), else None."""
    try:
        ocr_store(svc).put(
            collection,
            image_id,
            outcome.lines,
            error=outcome.error,
            min_confidence=svc.settings.ocr_min_confidence,
        )
    except Exception as exc:  # the image is stored already: its text is reported missing, not the add failed
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.warning("OCR text of image %s in %s not stored: %s", image_id, collection, reason)
        return f"OCR text not stored ({reason}); the OCR job reads it again"
    return outcome.error


class PendingReads:
    """Images handed to the OCR pool during an add; `finish` stores them and reports per image."""

    def __init__(self, svc: Services, collection: str) -> None:
        self.svc = svc
        self.collection = collection
        self._futures: list[tuple[int, Future]] = []

    def submit(self, image_id: int, image: Image.Image) -> None:
        self._futures.append((image_id, ocr_engine(self.svc).submit(image)))

    def finish(self) -> dict[int, dict]:
        """Wait for every read, store it; image id -> {"status", "lines", "error"}."""
        report: dict[int, dict] = {}
        for image_id, future in self._futures:
            outcome: OcrOutcome = future.result()
            error = store_outcome(self.svc, self.collection, image_id, outcome)
            report[image_id] = {
                "status": "failed" if error else "ok",
                "lines": len(outcome.lines),
                "text": "\n".join(line.text for line in outcome.lines),
                "error": error,
            }
        self._futures.clear()
        return report


def read_backlog(svc: Services, collection: str, progress: Progress | None = None) -> dict:
    """Read every stored image of `collection` that has no OCR record yet (the background job).

    Resumable: a record is written per image, so a re-run starts where the last stopped.
    """
    svc.require_collection(collection)
    store = ocr_store(svc)
    if not store.enabled(collection):
        raise Conflict(f"OCR is not enabled for collection {collection!r}", collection=collection)
    progress = progress or Counter()
    engine = ocr_engine(svc)
    read = failed = 0
    after = 0
    progress.set_total(svc.images.count(collection) - sum(store.counts(collection).values()))
    while not progress.cancelled():
        ids = store.unread_ids(collection, after, BACKLOG_BATCH)
        if not ids:
            break
        after = ids[-1]
        rows = svc.images.get_rows(collection, ids, with_image=True)
        futures: list[tuple[int, Future]] = []
        for image_id in ids:
            row = rows.get(image_id)
            if row is None:
                continue  # deleted meanwhile
            try:
                image = decode_b64_image(row.image_b64 or "", svc.settings.max_image_pixels)
            except (ServiceError, ValueError) as exc:
                reason = getattr(exc, "message", str(exc))
                store_outcome(svc, collection, image_id, OcrOutcome([], f"cannot decode: {reason}"))
                progress.fail(f"image {image_id}", reason)
                failed += 1
                continue
            futures.append((image_id, engine.submit(image)))
        for image_id, future in futures:
            error = store_outcome(svc, collection, image_id, future.result())
            if error:
                progress.fail(f"image {image_id}", error)
                failed += 1
            else:
                read += 1
                progress.advance(1)
    progress.flush()
    return {"read": read, "failed": failed}


def ocr_text(svc: Services, collection: str, image_id: int) -> OcrRecord | None:
    """The text read from one image (None: not read yet); NotFound if OCR is off."""
    svc.require_collection(collection)
    store = ocr_store(svc)
    if not store.enabled(collection):
        raise NotFound(f"OCR is not enabled for collection {collection!r}", collection=collection)
    return store.get(collection, [image_id]).get(int(image_id))


def text_matches(svc: Services, collection: str, query: str, limit: int) -> list[TextMatch]:
    """Images whose recognised text contains `query`, best first ([] when OCR is off)."""
    if not ocr_enabled(svc, collection):
        return []
    return ocr_store(svc).search(collection, query, limit, svc.settings.ocr_text_candidates)


def forget(svc: Services, collection: str, ids: Sequence[int]) -> None:
    """Remove the OCR records of deleted images (nothing when OCR is off)."""
    if ids and ocr_enabled(svc, collection):
        ocr_store(svc).delete(collection, ids)


def close_ocr(svc: Services) -> None:
    """Stop this process's OCR pool (images still waiting are dropped; their adds were answered
    or are being cancelled, and the OCR job reads what has no record)."""
    with _lock:
        engine = svc.extra.pop("ocr_engine", None)
    if engine is not None:
        engine.close()


def drop_ocr(svc: Services, collection: str) -> None:
    """Drop the OCR tables of a dropped collection."""
    if getattr(svc.images, "pool", None) is not None:
        ocr_store(svc).drop(collection)
