"""Deadlines the client sees: /healthz answers from the event loop whatever the worker threads
do, and a body that stops arriving is cut with 408 (BODY_READ_TIMEOUT_S). The fault scenarios
under traffic are in tests/api/test_faults.py; the stores' deadlines in tests/stores and
tests/unit/test_deadline.py."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.limits import BodyLimitMiddleware
from app.main import create_app
from operations import deadline
from operations.errors import DependencyUnavailable
from tests.browser.support import ServerThread, http_json
from tests.stack import make_services, make_settings, unique

MARGIN_S = 1.0


def test_healthz_answers_while_every_worker_thread_is_busy(tmp_path):
    settings = make_settings(tmp_path, worker_threads=1)
    svc = make_services(settings)
    release = threading.Event()
    real_encode = svc.encoder.encode_texts

    def stuck_encode(texts):  # blocking work holding the only worker thread
        release.wait(10)
        return real_encode(texts)

    svc.encoder.encode_texts = stuck_encode  # type: ignore[method-assign]
    with TestClient(create_app(settings, svc), raise_server_exceptions=False) as c:
        assert c.post("/img/collections", json={"name": "test"}).status_code == 201
        busy = threading.Thread(
            target=lambda: c.post("/img/search", json={"query": "猫", "collection": "test"})
        )
        busy.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            r = c.get("/healthz")
            took = time.monotonic() - started
        finally:
            release.set()
            busy.join(20)
        assert r.status_code == 200
        assert took < 0.5, f"/healthz waited {took:.2f} s for a worker thread"


def _raw_request(port: int, head: bytes, body: bytes, wait_s: float) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(head + body)
        started = time.monotonic()
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        return data, time.monotonic() - started


@pytest.mark.services  # uvicorn: a raw socket needs a real server
def test_stalled_upload_is_cut_with_408(tmp_path):
    settings = make_settings(tmp_path, body_read_timeout_s=1.0)
    svc = make_services(settings)
    server = ServerThread(create_app(settings, svc)).start()
    try:
        collection = unique("stall")
        status, _ = http_json(f"{server.url}/img/collections", "POST", {"name": collection})
        assert status == 201
        declared = 200 * 1024 * 1024
        head = (
            f"POST /img/images/{collection} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
        data, took = _raw_request(server.port, head, part + b"\xff" * 1024, wait_s=10)
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b"request_timeout" in data
        assert took < 1.0 + MARGIN_S
        # A JSON body that stops half way, too.
        head = (
            b"POST /img/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        data, took = _raw_request(server.port, head, b'{"query": "', wait_s=10)
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert took < 1.0 + MARGIN_S
        # A body that keeps arriving, slowly, is read to its end.
        body = b'{"query": "\xe7\x8c\xab", "collection": "' + collection.encode() + b'"}'
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                b"POST /img/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            for i in range(0, len(body), 8):
                s.sendall(body[i : i + 8])
                time.sleep(0.3)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    finally:
        server.stop()


def test_sync_routes_run_inside_the_request_scope():
    # The scope opened by the middleware reaches the worker thread of a sync route, so a
    # store that failed earlier in the request is not waited for again there.
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: 1024)

    @app.post("/twice")
    def twice() -> dict:
        waited = []
        for _ in range(2):
            started = time.monotonic()
            try:
                with deadline.store_call("db", 0.3) as d:
                    time.sleep(0.35)
                    d.left_or_raise()
            except DependencyUnavailable:
                waited.append(round(time.monotonic() - started, 2))
        return {"waited": waited}

    with TestClient(app) as c:
        waited = c.post("/twice").json()["waited"]
    assert len(waited) == 2 and waited[0] >= 0.3 and waited[1] < 0.05, waited


def test_readiness_checks_milvus_and_sql_at_the_same_time(tmp_path):
    """Each check waits for the other to have started: checked one after the other, the first
    would wait out the barrier and both would report the broken barrier, not "ok"."""
    settings = make_settings(tmp_path)
    svc = make_services(settings)
    both = threading.Barrier(2, timeout=5)
    real = {"milvus": svc.vectors.ping, "sql": svc.images.ping}

    def pinging(name):
        def ping():
            try:
                both.wait()
            except threading.BrokenBarrierError:
                raise DependencyUnavailable(f"{name} was checked alone") from None
            real[name]()

        return ping

    svc.vectors.ping = pinging("milvus")  # type: ignore[method-assign]
    svc.images.ping = pinging("sql")  # type: ignore[method-assign]
    with TestClient(create_app(settings, svc)) as c:
        ready = c.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"model": ready.json()["checks"]["model"], "milvus": "ok", "sql": "ok"}
