"""Which statuses each route documents, with one shared error schema and examples.

The statuses come from two places, both derived, so the OpenAPI document
cannot fall behind the code:
- what every route of a kind can answer (`STRUCTURAL`): any parameter can be
  invalid (422), any write can be over the body limit (413) or stall while
  its body is read (408), any route that
  needs the services can find them unavailable (503), a protected route can
  refuse the key (401);
- the domain errors a route's code raises, declared beside it with
  `responses=raises(NotFound, ...)` and mapped through the one error map
  (`app.errors.STATUS`).
Adding a status is one line: a class in STATUS (and its line in DESCRIPTIONS),
or a rule in STRUCTURAL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from app import deps
from app.errors import STATUS, error_body
from operations import errors as e


class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. not_found")
    message: str = Field(description="what went wrong, for people")
    details: dict = Field(default_factory=dict, description="structured details (maybe empty)")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorInfo


# One line per status: what it means here, and an example body.
DESCRIPTIONS: dict[int, tuple[str, str, str]] = {
    400: ("bad name or path", "bad_request", "invalid collection name 'x;drop': use letters, digits and _"),
    401: ("missing or wrong X-API-Key", "unauthorized", "missing or wrong X-API-Key"),
    404: ("no such collection, image or job", "not_found", "collection 'nope' does not exist"),
    408: (
        "the request body stopped arriving (BODY_READ_TIMEOUT_S); the connection is closed",
        "request_timeout",
        "the request body sent nothing for 30 s",
    ),
    409: (
        "model mismatch, a job in the wrong state, or a drop while jobs run",
        "conflict",
        "collection 'demo' was built with model RN50",
    ),
    413: ("body, file or pixels over the limit", "payload_too_large", "image has 20000x20000 pixels"),
    415: ("not an image", "unsupported_media", "not an image: the bytes are not in a known image format"),
    422: (
        "invalid value (the field is named)",
        "invalid_input",
        "top_k: Input should be less than or equal to 100",
    ),
    503: (
        "Milvus or SQL unavailable, or the service at its load limit (overloaded): retry after Retry-After",
        "dependency_unavailable",
        "milvus unavailable: timeout",
    ),
}

RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def _has_params(route: APIRoute) -> bool:
    # Its dependencies' parameters too (a key header read by a dependency is one FastAPI validates).
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        if d.path_params or d.query_params or d.header_params or d.body_params:
            return True
        stack.extend(d.dependencies)
    return route.body_field is not None


def _needs(route: APIRoute, dependency: Callable) -> bool:
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        if d.call is dependency:
            return True
        stack.extend(d.dependencies)
    return False


# (status, does the route answer it?) for every route, whatever its code raises.
STRUCTURAL: list[tuple[int, Callable[[APIRoute], bool]]] = [
    (422, _has_params),
    (413, lambda r: bool(set(r.methods or ()) - {"GET", "HEAD", "OPTIONS"})),  # BodyLimitMiddleware
    (408, lambda r: bool(set(r.methods or ()) - {"GET", "HEAD", "OPTIONS"})),  # its body read timeout
    (401, lambda r: _needs(r, deps.require_api_key) or _needs(r, deps.require_metrics_key)),
    (503, lambda r: any(_needs(r, d) for d in deps.SERVICE_DEPENDENCIES)),
]


def status_doc(status: int) -> dict:
    """The OpenAPI response object of an error status: shared schema, example, Retry-After on 503."""
    description, code, message = DESCRIPTIONS[status]
    doc: dict = {
        "model": ErrorBody,
        "description": description,
        "content": {"application/json": {"example": error_body(code, message)}},
    }
    if status == 503:
        doc["headers"] = RETRY_AFTER
    return doc


def raises(*errors: type[e.ServiceError]) -> dict[int | str, dict]:
    """`responses=` for a route whose code raises these domain errors (mapped by app.errors.STATUS)."""
    out: dict[int | str, dict] = {}
    for cls in errors:
        status = next(STATUS[c] for c in cls.__mro__ if c in STATUS)
        out[status] = status_doc(status)
    return out


def expected_statuses(route: APIRoute) -> set[int]:
    """Every error status `route` can answer: the structural ones and its declared ones."""
    declared = {int(s) for s in route.responses if int(s) >= 400}
    return declared | {status for status, applies in STRUCTURAL if applies(route)}


def api_routes(routers: Iterable[APIRouter]) -> Iterator[APIRoute]:
    """The documented routes of `routers` (paths include the routers' prefixes)."""
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                yield route


def document_errors(routers: Iterable[APIRouter]) -> None:
    """Add the structural statuses to every route's responses (before the routers are included)."""
    for route in api_routes(routers):
        for status in sorted(expected_statuses(route)):
            route.responses.setdefault(status, status_doc(status))
