"""The real server process (`python -m app.main`, the demo model, Lite + SQLite) with each
LOG_FORMAT: every line it writes is in that format (uvicorn's too), its request lines carry
the request id, and its /metrics counts the requests it served, exactly (a fresh process)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import metric_samples

REPO = Path(__file__).resolve().parents[2]
# time level logger [request_id( job=...)] message
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) \[([^\]]+)\] (.*)$"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(tmp: Path, log_format: str) -> tuple[list[str], dict]:
    """Start the server, send the requests of the test, stop it; its log lines and last scrape."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    (tmp / "data").mkdir()
    env = {
        **os.environ,
        "MODEL_NAME": "demo-tiny",
        "MODEL_CHECKPOINT": str(REPO / "models/demo/demo-tiny.pt"),
        "MODEL_ARCH": str(REPO / "config/model_configs/demo-tiny.json"),
        "ENCODER_BACKEND": "torch",
        "DEFAULT_COLLECTION": "demo",
        "MILVUS_URI": str(tmp / "milvus.db"),
        "SQLITE_PATH": str(tmp / "images.sqlite3"),
        "DATA_ROOT": str(tmp / "data"),
        "LOG_FORMAT": log_format,
    }
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.main", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 120
            while True:
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                try:
                    if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, log_path.read_text(errors="replace")[-3000:]
                time.sleep(0.3)
            made = httpx.post(base + "/img/collections", json={"name": "demo"}, timeout=30)
            assert made.status_code == 201, made.text
            for i in range(2):
                r = httpx.post(
                    base + "/img/search",
                    json={"query": "红色的圆形", "top_k": 3},
                    headers={"X-Request-ID": f"e2e-search-{i}"},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                assert r.headers["X-Request-ID"] == f"e2e-search-{i}"
            assert httpx.get(base + "/img/nothing/here", timeout=30).status_code == 404
            scrape = metric_samples(httpx.get(base + "/metrics", timeout=30).text)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return log_path.read_text(encoding="utf-8").splitlines(), scrape


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_server_logs_and_metrics(tmp_path, log_format):
    lines, scrape = run_server(tmp_path, log_format)
    assert lines
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line: one JSON object
        for rec in records:
            assert {"time", "level", "logger", "message", "request_id"} <= set(rec), rec
        entries = [(r["logger"], r["request_id"], r["message"]) for r in records]
    else:
        entries = []
        for line in lines:
            m = TEXT_LINE.match(line)
            if m is None:  # only a traceback's continuation lines are not log lines
                assert entries and not line[:1].isdigit(), line
                continue
            entries.append((m.group(1), m.group(2), m.group(3)))
    loggers = {logger for logger, _, _ in entries}
    assert "uvicorn.error" in loggers  # uvicorn's own lines in our format
    for i in range(2):
        mine = {(logger, msg.split(" ")[0]) for logger, rid, msg in entries if rid == f"e2e-search-{i}"}
        assert ("operations.search", "search") in mine, entries
        assert ("app.access", "POST") in mine, entries
    # uvicorn's access lines (without the id) are replaced by ours.
    assert "uvicorn.access" not in loggers

    # The process's /metrics: exactly what it served.
    def count(route: str, status: str, method: str) -> float:
        key = (
            "imgsearch_http_requests_total",
            frozenset({"method": method, "route": route, "status": status}.items()),
        )
        return scrape.get(key, 0.0)

    assert count("/img/search", "200", "POST") == 2
    assert count("/img/collections", "201", "POST") == 1
    assert count("unmatched", "404", "GET") == 1
    assert scrape[("imgsearch_query_cache_requests_total", frozenset({"result": "hit"}.items()))] == 1
