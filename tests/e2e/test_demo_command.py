"""The README's main command, as a newcomer runs it: scripts/demo.sh, then a Chinese query.

Runs the real script (setup skipped: the suite runs after it) on fresh Milvus Lite
and SQLite files, against the committed demo model and the generated demo data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from scripts.dev_services import free_port
from tests.stack import REPO

pytestmark = pytest.mark.slow


def _has_red_circle(scene: dict) -> bool:
    return any(o["shape"] == "circle" and o["colour"] == "red" for o in scene["objects"])


def test_demo_script_serves_the_demo_and_finds_red_circles(tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        SKIP_SETUP="1",
        PORT=str(port),
        MILVUS_URI=str(tmp_path / "milvus.db"),
        SQLITE_PATH=str(tmp_path / "images.sqlite3"),
    )
    for key in ("MODEL_NAME", "MODEL_CHECKPOINT", "MODEL_ARCH", "DEFAULT_COLLECTION", "MYSQL_URL"):
        env.pop(key, None)
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "demo did not come up"
            time.sleep(1)
        assert "以文搜图" in httpx.get(base + "/", timeout=10).text
        r = httpx.post(base + "/img/search", json={"query": "左边有一个红色的圆形", "top_k": 10}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "demo-tiny" and body["collection"] == "demo"
        # The demo model ships calibrated: every result carries a relevance in 0..1.
        assert body["calibrated"] is True, body["relevance_note"]
        assert all(0 <= x["relevance"] <= 1 for x in body["results"])
        scenes = {}
        with open(REPO / "datasets" / "data" / "demo" / "test_scenes.jsonl", encoding="utf-8") as f:
            for line in f:
                scene = json.loads(line)
                scenes[scene["image_id"]] = scene
        hits = [_has_red_circle(scenes[x["id"]]) for x in body["results"]]
        base_rate = sum(map(_has_red_circle, scenes.values())) / len(scenes)  # about 4%
        # The small demo model is weak on single objects (see models/demo/README.md), but
        # red circles fill its top 10 several times more often than chance would.
        assert sum(hits) >= 2 and sum(hits) / 10 >= 3 * base_rate, (hits, base_rate)
        count = httpx.get(base + "/img/collections/demo/count", timeout=10).json()
        assert count["images"] == count["vectors"] == len(scenes)
        # The demo's images with Chinese text, in collection "shop" with OCR: found by their text.
        r = httpx.post(
            base + "/img/search",
            json={"query": "13812345678", "collection": "shop", "mode": "text"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        [hit] = r.json()["results"]
        assert "13812345678" in hit["ocr_text"] and hit["signals"] == ["text"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
