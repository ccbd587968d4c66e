"""Regressions the schemathesis runs (tests/test_fuzz.py) found, kept as plain tests."""

from __future__ import annotations

import threading

from operations.errors import ServiceError
from tests.stack import unique


def test_the_same_collection_created_at_once_by_several_threads(services):
    """Stateful fuzzing: a load job and POST /img/collections created "demo" at the same
    moment; the second creation failed inside Milvus Lite ("File exists") and answered 503."""

    def create(name: str, start: threading.Barrier, errors: list) -> None:
        start.wait()
        try:
            services.ensure_collection(name)
        except ServiceError as exc:
            errors.append(exc)

    for _ in range(3):
        name, start, errors = unique("race"), threading.Barrier(6), []
        threads = [threading.Thread(target=create, args=(name, start, errors)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, [getattr(e, "message", e) for e in errors]
        assert services.vectors.has_collection(name)


def test_a_collection_is_not_dropped_under_a_running_job(tmp_path):
    """Stateful fuzzing: DELETE /img/collections/demo while a load job wrote to it answered 503
    (Milvus Lite: "WAL already closed", "Directory not empty") and could leave half a collection.

    The DELETE comes while the job is at its first vector write (the collection exists and is
    being written), and that write waits for the answer: however fast or slow the machine."""
    import time

    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.stack import make_services, make_settings, tiny_encoder, write_dataset

    settings = make_settings(tmp_path)
    write_dataset(settings.data_root / "ds", "valid", 300, tiny_encoder().dim)
    svc = make_services(settings)
    writing, deleted, real_upsert = threading.Event(), threading.Event(), svc.vectors.upsert

    def upsert_after_the_delete(*args, **kwargs):
        writing.set()
        assert deleted.wait(60), "the DELETE was not answered"
        return real_upsert(*args, **kwargs)

    svc.vectors.upsert = upsert_after_the_delete
    with TestClient(create_app(settings, svc)) as client:
        job_id = client.post(
            "/img/load", json={"dataset": "ds", "split": "valid", "collection": "busy"}
        ).json()["job_id"]
        assert writing.wait(60), "the load job did not start writing"
        refused = client.delete("/img/collections/busy")
        deleted.set()
        assert refused.status_code == 409, refused.text
        assert job_id in refused.json()["error"]["message"]
        deadline = time.time() + 120
        while client.get(f"/img/jobs/{job_id}").json()["state"] in ("queued", "running"):
            assert time.time() < deadline
            time.sleep(0.05)
        assert client.get(f"/img/jobs/{job_id}").json()["state"] == "succeeded"
        assert client.get("/img/collections/busy/count").json()["images"] == 300
        assert client.delete("/img/collections/busy").status_code == 200


def test_a_streamed_scan_with_ocr_patterns_on_a_collection_without_ocr_is_a_409(tmp_path):
    """Random fuzzing (seed 2093125689): POST /img/scan as a CSV export (no limit) with
    descriptions and an OCR pattern, on a collection without OCR. The CLIP rows streamed, then
    the OCR rows' turn raised the 409 after the headers were sent: the client got a cut chunked
    stream. The check now comes before the response starts, for both formats."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.stack import jpeg, make_services, make_settings

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, make_services(settings))) as client:
        assert client.post("/img/collections", json={"name": "plain"}).status_code == 201
        files = [("files", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(3)]
        assert client.post("/img/images/plain", files=files).status_code == 200
        body = {
            "collection": "plain",
            "descriptions": ["INF", "红色"],
            "threshold": -0.37,  # every image is a CLIP hit: rows stream before the OCR part
            "limit": None,
            "ocr_patterns": [{"builtin": "url"}],
        }
        for fmt in ("csv", "jsonl", "json"):
            r = client.post("/img/scan", json={**body, "format": fmt})
            assert r.status_code == 409, (fmt, r.status_code, r.text[:300])
            assert "OCR is not enabled" in r.json()["error"]["message"]
        # Without the patterns the same export streams every match.
        r = client.post(
            "/img/scan", json={**{k: v for k, v in body.items() if k != "ocr_patterns"}, "format": "csv"}
        )
        assert r.status_code == 200 and len(r.text.strip().splitlines()) == 1 + 3 * 2
