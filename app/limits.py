"""Request limits enforced while the request streams in.

Starlette does not bound uploads, so this ASGI middleware refuses a body over
the limit from its Content-Length, or stops reading a chunked one as soon as
it passes the limit: the process never holds more than the limit. A body that
stops arriving (no bytes for `read_timeout_s`) is cut with 408 instead of
holding a connection and its buffers for as long as the client likes.

Each HTTP request also gets its store-deadline scope (operations/deadline.py).
"""

from __future__ import annotations

import json

import anyio

from app.errors import error_body
from operations import deadline
from operations.errors import PayloadTooLarge, RequestTimeout


class BodyTooLarge(PayloadTooLarge):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is over the {limit}-byte limit")


class BodyStalled(RequestTimeout):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body sent nothing for {seconds:g} s")


class BodyLimitMiddleware:
    def __init__(self, app, limit_for, read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit_for = limit_for  # (path) -> max bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with deadline.request_scope():
            if scope["method"] in ("GET", "HEAD", "OPTIONS"):
                return await self.app(scope, receive, send)
            return await self._limited(scope, receive, send)

    async def _limited(self, scope, receive, send):
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _reject(send, 413, error_body("payload_too_large", BodyTooLarge(limit).message))
        seen = 0
        started = False
        body_done = False

        async def limited_receive():
            nonlocal seen, body_done
            if body_done:
                # After the body, receive() waits for the client to disconnect
                # (streaming responses listen for it): no time limit there.
                return await receive()
            try:
                with anyio.fail_after(self.read_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyStalled(self.read_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyStalled) as exc:
            if not started:
                status = 413 if isinstance(exc, BodyTooLarge) else 408
                await _reject(send, status, error_body(exc.code, exc.message))


async def _reject(send, status: int, error: dict) -> None:
    body = json.dumps(error).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
