"""Risk scan over a whole collection."""

from __future__ import annotations

import itertools

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from app.contract import raises
from app.deps import SvcDep, collection_name
from app.routes.views import image_url
from app.schemas import ScanItem, ScanRequest, ScanResponse
from operations.errors import BadRequest, Conflict, InvalidInput, NotFound
from operations.scan import csv_lines, jsonl_lines, plan_scan, scan, to_csv, to_jsonl

router = APIRouter(prefix="/img", tags=["scan"])

_FILES = {
    "csv": ("text/csv; charset=utf-8", "csv", csv_lines, to_csv),
    "jsonl": ("application/x-ndjson", "jsonl", jsonl_lines, to_jsonl),
}


@router.post(
    "/scan",
    response_model=ScanResponse,
    summary="Every image whose similarity to any description reaches the threshold",
    responses={
        200: {"content": {"text/csv": {}, "application/x-ndjson": {}}},
        **raises(BadRequest, NotFound, Conflict, InvalidInput),
    },
)
def risk_scan(body: ScanRequest, svc: SvcDep):
    collection = collection_name(svc, body.collection)
    flt = body.filters.to_filter() if body.filters else None
    patterns = [p.model_dump(exclude_none=True) for p in body.ocr_patterns]
    if body.format in _FILES:
        media, ext, stream, render = _FILES[body.format]
        disposition = {"Content-Disposition": f'attachment; filename="scan_{collection}.{ext}"'}
        if body.limit is None:
            # The whole export, streamed: every match from `offset` on, no cap.
            # The total is unknown until the end, so there is no X-Total-Count.
            plan = plan_scan(svc, collection, body.descriptions, body.threshold, flt, patterns)
            hits = itertools.islice(plan.hits(), body.offset, None)
            # The first rows are read here, so an unreachable store is a 503, not a cut stream.
            first = list(itertools.islice(hits, 1))
            return StreamingResponse(
                stream(itertools.chain(first, hits)),
                media_type=media,
                headers={**disposition, "X-Offset": str(body.offset)},
            )
        # One page of an export: its bounds and the total travel as headers;
        # X-Next-Offset is there when rows remain past this page.
        outcome = scan(
            svc, collection, body.descriptions, body.threshold, flt, body.offset, body.limit, patterns
        )
        page = {
            "X-Total-Count": str(outcome.total),
            "X-Offset": str(outcome.offset),
            "X-Limit": str(outcome.limit),
            "X-OCR-Timed-Out": str(outcome.ocr_timed_out),
        }
        if outcome.offset + outcome.limit < outcome.total:
            page["X-Next-Offset"] = str(outcome.offset + outcome.limit)
        return Response(render(outcome), media_type=media, headers={**page, **disposition})
    outcome = scan(
        svc, collection, body.descriptions, body.threshold, flt, body.offset, body.limit or 100, patterns
    )
    return ScanResponse(
        collection=collection,  # the name asked for (outcome.collection: what it resolved to)
        model=outcome.model,
        threshold=outcome.threshold,
        total=outcome.total,
        offset=outcome.offset,
        limit=outcome.limit,
        ocr_timed_out=outcome.ocr_timed_out,
        hits=[ScanItem(**h.__dict__, url=image_url(collection, h.image_id)) for h in outcome.hits],
    )
