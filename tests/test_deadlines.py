"""Deadlines that hold: a store call waits at most its store's timeout (pre-ping, reconnect and
retries share it), /healthz answers from the event loop whatever the worker threads do, a body
that stops arriving is cut with 408, and an outage logs a line when it starts and one when it
ends. The fault scenarios under traffic are in tests/test_faults.py."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from operations import deadline
from operations.errors import DependencyUnavailable
from operations.stores.outage import OutageLog
from operations.stores.sql_pool import SqlPool
from tests.browser_support import ServerThread
from tests.stack import make_services, make_settings, unique

T_S = 2.0
MARGIN_S = 1.0


@pytest.fixture
def frozen_pool(mariadb):
    """A pool with one idle pooled connection, and its MariaDB frozen (SIGSTOP)."""
    pool = SqlPool(mariadb.create_database(), timeout_s=T_S, size=2)
    assert pool.query("SELECT 1") == [(1,)]
    mariadb.pause()
    try:
        yield pool
    finally:
        mariadb.resume()
        pool.close()


def test_frozen_mariadb_costs_one_timeout_not_preping_plus_reconnect(frozen_pool):
    # The pooled connection's pre-ping waits, then a new connection is opened: both share
    # the call's one deadline.
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable):
        frozen_pool.query("SELECT 1")
    assert time.monotonic() - started < T_S + MARGIN_S


def test_a_request_does_not_wait_again_for_a_store_that_failed(frozen_pool):
    # E.g. an add taking back its rows after the SQL store timed out: the request ends.
    started = time.monotonic()
    with deadline.request_scope():
        for _ in range(3):
            with pytest.raises(DependencyUnavailable):
                frozen_pool.query("SELECT 1")
    assert time.monotonic() - started < T_S + MARGIN_S


def test_busy_pool_slot_wait_shares_the_deadline(mariadb):
    pool = SqlPool(mariadb.create_database(), timeout_s=T_S, size=1)
    try:
        with pool.connection():  # the only slot, held by "another request"
            started = time.monotonic()
            with pytest.raises(DependencyUnavailable, match="busy"):
                pool.query("SELECT 1")
            assert time.monotonic() - started < T_S + MARGIN_S
        assert pool.query("SELECT 1") == [(1,)]
    finally:
        pool.close()


def test_deadline_nests_and_runs_out():
    with deadline.store_call("x", 0.3) as outer:
        with deadline.store_call("x", 10.0) as inner:
            assert inner is outer  # nested calls share the outer call's deadline
        with deadline.store_call("y", 10.0) as other:
            assert other.left() > 5  # another store has its own
        time.sleep(0.35)
        with pytest.raises(DependencyUnavailable, match="x unavailable"):
            outer.left_or_raise()
    assert deadline.current("x") is None


def test_outage_log_is_two_lines_with_counts(caplog):
    caplog.set_level(logging.INFO)
    outage = OutageLog("milvus", logging.getLogger("test.outage"), settle_s=0.3)
    outage.succeeded()
    for _ in range(5):
        outage.failed("deadline exceeded")
    outage.succeeded()  # answering again, not yet settled:
    outage.failed("no answer within 2 s")  # still the same outage
    outage.succeeded()
    time.sleep(0.35)
    outage.succeeded()
    outage.succeeded()
    lines = [r.getMessage() for r in caplog.records if r.name == "test.outage"]
    assert len(lines) == 2, lines
    assert "milvus is down" in lines[0] and "deadline exceeded" in lines[0]
    assert "milvus is back" in lines[1] and "6 calls failed" in lines[1]


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


def test_stalled_upload_is_cut_with_408(tmp_path):
    settings = make_settings(tmp_path, body_read_timeout_s=1.0)
    svc = make_services(settings)
    server = ServerThread(create_app(settings, svc)).start()
    try:
        collection = unique("stall")
        assert svc.vectors is not None
        from tests.browser_support import http_json

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
