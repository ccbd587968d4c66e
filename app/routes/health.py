"""Liveness and readiness."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.contract import RETRY_AFTER, ErrorBody
from app.deps import SvcDep
from operations.errors import ServiceError

router = APIRouter(tags=["health"])

# Readiness asks Milvus while this request's thread asks SQL: a probe waits for the slower
# store's deadline, not for the sum of both (a hung Milvus would otherwise delay the SQL
# check, and the probe's own timeout could expire first). Two threads: one probe at a time is
# the normal load; a second queued behind a hung store still ends within its deadline.
_PINGS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz")


def _check(ping: Callable[[], None]) -> str:
    try:
        ping()
        return "ok"
    except ServiceError as exc:
        return exc.message


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
    # The request's context (its deadline and id) goes with the Milvus check to its thread.
    milvus = _PINGS.submit(contextvars.copy_context().run, _check, svc.vectors.ping)
    checks["sql"] = _check(svc.images.ping)
    checks["milvus"] = milvus.result()
    checks = {k: checks[k] for k in ("model", "milvus", "sql")}
    ok = checks["milvus"] == "ok" and checks["sql"] == "ok"
    headers = {} if ok else {"Retry-After": "5"}
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503, headers=headers
    )
