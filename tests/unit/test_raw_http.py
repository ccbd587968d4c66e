"""The load generator's lean HTTP/1.1 client (bench/raw_http.py) against a real uvicorn:
JSON and multipart POSTs arrive as sent, answers are read by length or by chunks, the
connection is kept and reopened when the server closes it, and failures raise RawHttpError."""

from __future__ import annotations

import asyncio
import hashlib
import itertools

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bench import search_load as sl
from bench._common import free_port
from bench.raw_http import RawHttpClient, RawHttpError, multipart
from tests.browser.support import ServerThread

pytestmark = pytest.mark.services  # starts uvicorn


def _app() -> Starlette:
    async def echo_json(request: Request):
        body = await request.json()
        return JSONResponse({"got": body, "ctype": request.headers["content-type"]})

    async def echo_form(request: Request):
        form = await request.form()
        upload = form["file"]
        data = await upload.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return JSONResponse(
            {"fields": fields, "filename": upload.filename, "sha": hashlib.sha256(data).hexdigest()}
        )

    async def chunks(_request: Request):
        async def parts():
            for i in range(5):
                yield f"part{i};".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    async def closing(_request: Request):
        return PlainTextResponse("bye", headers={"Connection": "close"})

    async def nothing(_request: Request):
        return Response(status_code=204)

    async def gone(request: Request):
        return JSONResponse({"deleted": int(request.path_params["n"])}, status_code=404)

    return Starlette(
        routes=[
            Route("/json", echo_json, methods=["POST"]),
            Route("/form", echo_form, methods=["POST"]),
            Route("/chunks", chunks),
            Route("/close", closing),
            Route("/items/{n}", gone, methods=["DELETE"]),
            Route("/nothing", nothing),
        ]
    )


@pytest.fixture(scope="module")
def server():
    srv = ServerThread(_app()).start()
    yield srv
    srv.stop()


def _run(coro):
    return asyncio.run(coro)


def test_json_post_arrives_as_sent_and_the_answer_is_read_by_its_length(server):
    async def go():
        async with RawHttpClient(server.url) as c:
            first = await c.post("/json", json={"query": "一只猫在草地上", "top_k": 3})
            second = await c.post("/json", json={"n": 2})  # the same connection, kept alive
            return first, second

    first, second = _run(go())
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    assert first.json() == {"got": {"query": "一只猫在草地上", "top_k": 3}, "ctype": "application/json"}
    assert second.json()["got"] == {"n": 2}


def test_multipart_upload_matches_what_httpx_would_send(server):
    data = bytes(range(256)) * 40  # binary, with CR and LF bytes inside
    fields = {"top_k": "5", "collection": "库_1"}

    async def go():
        async with RawHttpClient(server.url) as c:
            return await c.post("/form", files={"file": ("q.jpg", data, "image/jpeg")}, data=fields)

    ours = _run(go()).json()
    theirs = httpx.post(
        server.url + "/form", files={"file": ("q.jpg", data, "image/jpeg")}, data=fields, timeout=30
    ).json()
    assert ours == theirs == {"fields": fields, "filename": "q.jpg", "sha": hashlib.sha256(data).hexdigest()}
    body, ctype = multipart([("files", ("a.jpg", b"x", "image/jpeg"))], {})
    assert ctype.startswith("multipart/form-data; boundary=") and body.count(b'name="files"') == 1


def test_chunked_and_empty_answers_and_a_server_that_closes_the_connection(server):
    async def go():
        async with RawHttpClient(server.url) as c:
            chunked = await c.get("/chunks")
            closed = await c.get("/close")
            after = await c.delete("/items/7")  # a new connection, opened by itself
            empty = await c.get("/nothing")  # 204: no body to wait for
            again = await c.get("/chunks")  # the connection still in step after it
            return chunked, closed, after, empty, again

    chunked, closed, after, empty, again = _run(go())
    assert empty.status_code == 204 and empty.content == b"" and again.content == chunked.content
    assert chunked.content == b"part0;part1;part2;part3;part4;"
    assert closed.status_code == 200 and closed.content == b"bye"
    assert after.status_code == 404 and after.json() == {"deleted": 7}


def test_a_server_that_is_not_there_raises_raw_http_error():
    async def go():
        async with RawHttpClient(f"http://127.0.0.1:{free_port()}", timeout=5) as c:
            await c.post("/json", json={})

    with pytest.raises(RawHttpError, match="POST /json"):
        _run(go())
    with pytest.raises(ValueError, match="plain http"):
        RawHttpClient("https://example.org")


@pytest.mark.parametrize("generator", sl.GENERATORS)
def test_a_closed_loop_run_counts_the_same_answers_with_either_generator(generator):
    app_server = ServerThread(_search_app()).start()
    try:
        queries = sl.QueryStream(f"query {i}" for i in itertools.count())
        res = sl.run_closed_loop(
            app_server.url, "t", 8, sl.text_search(queries, "c", 10), 0.4, 0.1, generator=generator
        )
    finally:
        app_server.stop()
    s = res.summary("text")
    assert s["ok"] > 8 and s["errors"] == 0 and s["encode_ms"] == 0.25, s
    with pytest.raises(ValueError, match="generator"):
        make = sl.text_search(queries, "c", 10)
        sl.run_closed_loop(app_server.url, "t", 1, make, 0.1, 0.0, generator="curl")


def _search_app() -> Starlette:
    async def search(request: Request):
        body = await request.json()
        assert body["collection"] == "c" and body["top_k"] == 10
        return JSONResponse({"results": [], "timings_ms": {"total": 0.5, "encode": 0.25}})

    return Starlette(routes=[Route("/img/search", search, methods=["POST"])])
