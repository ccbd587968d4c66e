"""Risk scan over a whole collection."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.deps import SvcDep, collection_name
from app.routes.views import image_url
from app.schemas import ScanItem, ScanRequest, ScanResponse
from operations.scan import scan, to_csv, to_jsonl

router = APIRouter(prefix="/img", tags=["scan"])


@router.post(
    "/scan",
    response_model=ScanResponse,
    summary="Every image whose similarity to any description reaches the threshold",
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
)
def risk_scan(body: ScanRequest, svc: SvcDep):
    collection = collection_name(svc, body.collection)
    limit = body.limit or (100 if body.format == "json" else 10_000)
    outcome = scan(
        svc,
        collection,
        body.descriptions,
        body.threshold,
        body.filters.to_filter() if body.filters else None,
        body.offset,
        limit,
        [p.model_dump(exclude_none=True) for p in body.ocr_patterns],
    )
    if body.format in ("csv", "jsonl"):
        # A file has no room for the page's bounds: they travel as headers.
        # X-Next-Offset is there when rows remain past this page; X-Truncated
        # says a description reached Milvus' per-search cap (as in JSON).
        page = {
            "X-Total-Count": str(outcome.total),
            "X-Offset": str(outcome.offset),
            "X-Limit": str(outcome.limit),
            "X-Truncated": "true" if outcome.truncated else "false",
        }
        if outcome.offset + outcome.limit < outcome.total:
            page["X-Next-Offset"] = str(outcome.offset + outcome.limit)
        if body.format == "csv":
            return Response(
                to_csv(outcome),
                media_type="text/csv; charset=utf-8",
                headers={**page, "Content-Disposition": f'attachment; filename="scan_{collection}.csv"'},
            )
        return Response(
            to_jsonl(outcome),
            media_type="application/x-ndjson",
            headers={**page, "Content-Disposition": f'attachment; filename="scan_{collection}.jsonl"'},
        )
    return ScanResponse(
        collection=outcome.collection,
        model=outcome.model,
        threshold=outcome.threshold,
        total=outcome.total,
        offset=outcome.offset,
        limit=outcome.limit,
        truncated=outcome.truncated,
        ocr_timed_out=outcome.ocr_timed_out,
        hits=[ScanItem(**h.__dict__, url=image_url(collection, h.image_id)) for h in outcome.hits],
    )
