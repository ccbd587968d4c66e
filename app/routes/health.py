"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.contract import RETRY_AFTER, ErrorBody
from app.deps import SvcDep
from operations.errors import ServiceError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict:
    # Async: answered by the event loop, not queued behind the worker threads
    # (all of them may be waiting on a hung store; the process is still alive).
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str = Field(description="ready or unavailable")
    checks: dict[str, str] = Field(description="model, milvus, sql: ok or what is wrong")


@router.get(
    "/readyz",
    summary="Milvus, SQL and the model are ready",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness | ErrorBody,
            "description": "a dependency is not ready (or the service is still starting)",
            "headers": RETRY_AFTER,
        }
    },
)
def readyz(svc: SvcDep) -> JSONResponse:
    int8 = ", int8 text" if getattr(svc.encoder, "text_int8", False) else ""
    backend = getattr(svc.encoder, "backend", "torch")
    checks: dict[str, str] = {"model": f"{svc.encoder.model_name} ({svc.encoder.dim}-d, {backend}{int8})"}
    ok = True
    for name, ping in (("milvus", svc.vectors.ping), ("sql", svc.images.ping)):
        try:
            ping()
            checks[name] = "ok"
        except ServiceError as exc:
            checks[name] = exc.message
            ok = False
    headers = {} if ok else {"Retry-After": "5"}
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503, headers=headers
    )
