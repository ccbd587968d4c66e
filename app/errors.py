"""The one place domain errors become HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from operations import errors as e
from operations import metrics
from operations.encoding.model_files import ModelUnavailable

log = logging.getLogger(__name__)

STATUS = {
    e.BadRequest: 400,
    e.Unauthorized: 401,
    e.NotFound: 404,
    e.RequestTimeout: 408,
    e.Conflict: 409,
    e.PayloadTooLarge: 413,
    e.UnsupportedMedia: 415,
    e.InvalidInput: 422,
    e.DependencyUnavailable: 503,
    e.Overloaded: 503,
    # The model's files are missing: the service cannot answer until an operator puts them there.
    ModelUnavailable: 503,
}


def status_of(exc: e.ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def unavailable_cause(exc: e.ServiceError) -> str:
    """The cause label of a 503: the dependency (milvus, mysql, sqlite, model, jobs) or overloaded."""
    if isinstance(exc, e.Overloaded):
        return "overloaded"
    if isinstance(exc, ModelUnavailable):
        return "model"
    return str(getattr(exc, "dependency", "other"))[:32]


def error_body(code: str, message: str, **details: object) -> dict:
    # `details` always present (maybe empty), so clients read one shape.
    return {"error": {"code": code, "message": message, "details": details}}


# Starlette's own errors (no route, wrong method) in the same body as ours.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def install(app: FastAPI) -> None:
    @app.exception_handler(e.ServiceError)
    async def service_error(_: Request, exc: e.ServiceError) -> JSONResponse:
        status = status_of(exc)
        headers = {}
        if status == 503:
            metrics.UNAVAILABLE.labels(unavailable_cause(exc)).inc()
        if isinstance(exc, e.DependencyUnavailable):
            headers["Retry-After"] = str(exc.retry_after_s)
            # Not a warning per request: the store logs the outage once (operations/stores/outage.py).
            log.debug("dependency unavailable: %s", exc.message)
        elif isinstance(exc, e.RequestTimeout):
            headers["Connection"] = "close"  # the rest of the body is never read
        elif isinstance(exc, e.Overloaded):
            # Shed at once, so a client backs off instead of queueing for seconds.
            headers["Retry-After"] = str(exc.retry_after_s)
        elif status == 500:
            log.error("unmapped service error: %s", exc.message)
        return JSONResponse(error_body(exc.code, exc.message, **exc.details), status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"] if p != "body"), "problem": err["msg"]}
            for err in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "problem": "invalid request"}
        return JSONResponse(
            error_body("invalid_input", f"{first['field']}: {first['problem']}", problems=problems), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI wraps an error raised while it reads the body in a 400
        # ("error parsing the body"); when that error is ours (a chunked body
        # over the limit: 413), answer with it instead.
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, e.ServiceError):
            cause = cause.__cause__
        if isinstance(cause, e.ServiceError):
            return await service_error(request, cause)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        details: dict[str, object] = (
            {} if isinstance(exc.detail, str) or exc.detail is None else {"detail": exc.detail}
        )
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            path = request.url.path
            message = (
                f"not found: {path}"
                if path.startswith("/static/")
                else f"no such endpoint: {request.method} {path} (see /docs)"
            )
        return JSONResponse(
            error_body(code, message, **details), exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Anything else is our bug: log it, answer 500, keep serving.
        log.exception("unexpected error")
        return JSONResponse(error_body("internal_error", f"{type(exc).__name__}: internal error"), 500)
