"""Every HTTP request: its id, its metrics and its access line.

`RequestObservability` wraps the whole application, outside Starlette's error
middleware, so it sees every answer with its final status, a 500 from an
unexpected error and a 413 refused before routing included:
- the request id: the client's `X-Request-ID` when it is sane
  (operations.tracing.accept_request_id), else a new one; bound for the
  request's log lines and sent back in the `X-Request-ID` header;
- `imgsearch_http_requests_total` and `imgsearch_http_request_duration_seconds`
  by method, route template and status (operations/metrics.py): the template,
  never the raw path, so ids in paths do not make new series; a path no route
  matches counts as `unmatched`;
- one access line per request (logger `app.access`; the probes' and scrapes'
  at DEBUG), in place of uvicorn's, which is written outside the request and
  could not carry its id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match

from operations import metrics, tracing

access_log = logging.getLogger("app.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Polled every few seconds by orchestrators and Prometheus: their lines would bury the rest.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def route_template(routes: Sequence[BaseRoute], scope: dict) -> str:
    """The template of the route that answered (or would answer) this request."""
    route = scope.get("route")
    if route is None:
        # Answered before routing (e.g. a body over the limit): find the route it was for, as
        # the router would (the first full match, else the first that differs in method).
        matches = [(r, r.matches({**scope})[0]) for r in routes]
        route = next((r for r, m in matches if m is Match.FULL), None) or next(
            (r for r, m in matches if m is Match.PARTIAL), None
        )
    if route is None:
        return UNMATCHED
    return str(getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED)


def _shown_path(scope: dict) -> str:
    # The path as the client sent it (percent-encoded: no line breaks to forge log lines with).
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else scope["path"]
    return "".join(c if c.isprintable() else "?" for c in path[:300])


class RequestObservability:
    def __init__(self, app, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # every route with its template, for requests answered before routing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                sent = value.decode("latin-1")
                break
        request_id = tracing.accept_request_id(sent)
        header = (b"x-request-id", request_id.encode())
        status = 500  # what the client gets if nothing was sent (the server closes the connection)
        started = time.perf_counter()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        metrics.HTTP_IN_PROGRESS.inc()
        with tracing.bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                metrics.HTTP_IN_PROGRESS.dec()
                elapsed = time.perf_counter() - started
                method = scope["method"] if scope["method"] in METHODS else "other"
                route = route_template(self.routes, scope)
                labels = (method, route, str(status))
                metrics.HTTP_REQUESTS.labels(*labels).inc()
                metrics.HTTP_DURATION.labels(*labels).observe(elapsed)
                access_log.log(
                    logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO,
                    "%s %s %d %.1f ms",
                    scope["method"][:16],
                    _shown_path(scope),
                    status,
                    elapsed * 1000,
                )
