"""Request body limits enforced while the body streams in.

Starlette does not bound uploads, so this ASGI middleware refuses a body over
the limit from its Content-Length, or stops reading a chunked one as soon as
it passes the limit: the process never holds more than the limit.
"""

from __future__ import annotations

import json

from app.errors import error_body
from operations.errors import PayloadTooLarge


class BodyTooLarge(PayloadTooLarge):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is over the {limit}-byte limit")


class BodyLimitMiddleware:
    def __init__(self, app, limit_for) -> None:
        self.app = app
        self.limit_for = limit_for  # (path) -> max bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _reject(send, limit)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reject(send, limit)


async def _reject(send, limit: int) -> None:
    body = json.dumps(
        error_body("payload_too_large", f"request body is over the {limit}-byte limit")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
