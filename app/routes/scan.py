"""Risk scan over a whole collection."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.deps import SvcDep, collection_name
from app.routes.views import image_url
from app.schemas import ScanItem, ScanRequest, ScanResponse
from operations.scan import scan, to_csv, to_jsonl

router = APIRouter(prefix="/img", tags=["scan"])


@router.post("/scan", response_model=ScanResponse,
             summary="Every image whose similarity to any description reaches the threshold",
             responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}})
def risk_scan(body: ScanRequest, svc: SvcDep):
    collection = collection_name(svc, body.collection)
    outcome = scan(svc, collection, body.descriptions, body.threshold,
                   body.filters.to_filter() if body.filters else None, body.offset, body.limit)
    if body.format == "csv":
        return Response(to_csv(outcome), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="scan_{collection}.csv"'})
    if body.format == "jsonl":
        return Response(to_jsonl(outcome), media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="scan_{collection}.jsonl"'})
    return ScanResponse(collection=outcome.collection, model=outcome.model, threshold=outcome.threshold,
                        total=outcome.total, offset=outcome.offset, limit=outcome.limit,
                        truncated=outcome.truncated,
                        hits=[ScanItem(**h.__dict__, url=image_url(collection, h.image_id)) for h in outcome.hits])
