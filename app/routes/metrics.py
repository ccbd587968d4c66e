"""Prometheus metrics (the names: operations/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from app.deps import MetricsAccess

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    dependencies=[MetricsAccess],
    summary="Prometheus metrics: requests, search stages, batchers, query cache, jobs, store errors",
    response_class=Response,
    responses={
        200: {
            "description": "the Prometheus text format (OpenMetrics when the Accept header asks for it)",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        }
    },
)
async def metrics(request: Request) -> Response:
    # Async: answered by the event loop, like /healthz, even when every worker thread waits.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), headers={"content-type": content_type})
