"""Killed half way (kill -9), then run again: nothing lost, nothing doubled.

Real processes: the CLI loader, and the HTTP server with a background job.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from scripts.dev_services import free_port
from tests.stack import REPO, TINY_ARCH, make_services, tiny_encoder, unique, write_dataset

N = 3000


def _env(settings, collection: str) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "MILVUS_URI": settings.milvus_uri,
            "MYSQL_URL": settings.mysql_url,
            "SQLITE_PATH": str(settings.sqlite_path),
            "MODEL_NAME": "tiny",
            "MODEL_ARCH": str(TINY_ARCH),
            "MODEL_RANDOM_INIT": "true",
            "DEFAULT_COLLECTION": collection,
            "DATA_ROOT": str(settings.data_root),
            "LOAD_BATCH_SIZE": "50",
            "JOB_LEASE_S": "2",
        }
    )
    return env


def _rows_so_far(settings, collection: str) -> int:
    if settings.mysql_url:
        from operations.stores.sql_pool import SqlPool

        pool = SqlPool(settings.mysql_url, None, 5, 1)
        try:
            return int(pool.query(f"SELECT COUNT(*) FROM `img_{collection}`")[0][0])
        except Exception:
            return 0
        finally:
            pool.close()
    try:
        with sqlite3.connect(settings.sqlite_path, timeout=5) as conn:
            return conn.execute(f'SELECT COUNT(*) FROM "img_{collection}"').fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_consistent(settings, collection: str, ids: list[int]) -> None:
    svc = make_services(settings)
    try:
        assert svc.images.count(collection) == N
        assert svc.vectors.count(collection) == N  # upsert never duplicates a primary key
        assert svc.images.unindexed_ids(collection, 10) == []
        assert svc.vectors.existing_ids(collection, ids) == set(ids)
    finally:
        svc.vectors.close()
        svc.images.close()


@pytest.fixture(params=["lite", "server"])
def settings(request, tmp_path):
    from tests.fixtures_stack import backend_settings

    s = backend_settings(request, tmp_path, request.param)
    write_dataset(s.data_root / "big", "train", N, tiny_encoder().dim, seed=3)
    return s


def test_cli_load_killed_half_way_finishes_on_rerun(settings):
    collection = unique("kill")
    cmd = [
        sys.executable,
        "-m",
        "scripts.cli",
        "load",
        "--dataset",
        str(settings.data_root / "big"),
        "--split",
        "train",
        "--collection",
        collection,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(settings, collection), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_until(
            lambda: _rows_so_far(settings, collection) >= 300 or proc.poll() is not None,
            120,
            "the load to make progress",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = _rows_so_far(settings, collection)
    assert 0 < partial < N, f"kill landed outside the load ({partial} rows)"
    rerun = subprocess.run(
        cmd, cwd=REPO, env=_env(settings, collection), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ids = list(range(1, N + 1))
    _assert_consistent(settings, collection, ids)


def test_server_killed_during_a_load_job_takes_it_over_after_restart(settings):
    collection = unique("job")
    port = free_port()
    env = _env(settings, collection)
    cmd = [sys.executable, "-m", "app.main", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_until(up, 120, "the server to start")
        return proc

    server = start()
    try:
        job_id = httpx.post(base + "/img/load", json={"dataset": "big", "split": "train"}, timeout=10).json()[
            "id"
        ]
        _wait_until(
            lambda: httpx.get(f"{base}/img/jobs/{job_id}", timeout=5).json()["processed"] >= 300,
            120,
            "the job to make progress",
        )
        server.send_signal(signal.SIGKILL)
        server.wait()
        server = start()
        # Nobody resumes it: the restarted server takes the job over once the dead one's
        # lease lapses (JOB_LEASE_S), as any replica would.
        _wait_until(
            lambda: httpx.get(f"{base}/img/jobs/{job_id}", timeout=5).json()["owner"].split(":")[1]
            == str(server.pid),
            60,
            "the restarted server to take the job over",
        )
        _wait_until(
            lambda: httpx.get(f"{base}/img/jobs/{job_id}", timeout=5).json()["state"]
            not in ("queued", "running"),
            300,
            "the job to finish",
        )
        job = httpx.get(f"{base}/img/jobs/{job_id}", timeout=5).json()
        assert job["state"] == "succeeded" and job["processed"] == N and job["failed"] == 0, job
        counts = httpx.get(f"{base}/img/collections/{collection}/count", timeout=10).json()
        assert counts["images"] == counts["vectors"] == N
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    _assert_consistent(settings, collection, list(range(1, N + 1)))
