"""/metrics after real traffic, on Milvus Lite + SQLite and on the Milvus server + MariaDB: each
counter moved by exactly what the traffic did; request ids (echoed, made, carried into log lines
and job threads); the Grafana dashboard queries only metrics /metrics declares.

The metrics are the process's (operations/metrics.py), shared by every app a test run builds,
so each test compares a scrape before its traffic with one after."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.stack import (
    jpeg,
    make_services,
    make_settings,
    metric_families,
    metric_samples,
    tiny_encoder,
    unique,
    wait_job,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "imgsearch.json"
HEX32 = re.compile(r"[0-9a-f]{32}")


class Scrape:
    """Two scrapes of /metrics and the change of any sample between them."""

    def __init__(self, client) -> None:
        self.client = client
        self.before = self._get()
        self.after: dict = {}

    def _get(self) -> dict:
        r = self.client.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return metric_samples(r.text)

    def again(self) -> Scrape:
        self.after = self._get()
        return self

    def delta(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)

    def now(self, name: str, **labels: str) -> float:
        return self.after.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_real_traffic(client, caplog):
    """Searches (two distinct queries, one repeated, one by image), an add, a load job with a
    bad record, a 404 by route, a 404 no route knows, a 422: each counter by exactly that."""
    caplog.set_level(logging.INFO)
    settings = client.services.settings
    sql = "mysql" if settings.mysql_url else "sqlite"
    name = unique("met")
    assert client.post("/img/collections", json={"name": name}).status_code == 201
    ids, _ = write_dataset(settings.data_root / "metds", "valid", 12, tiny_encoder().dim, seed=3)
    tsv = settings.data_root / "metds" / "valid_imgs.tsv"
    lines = tsv.read_text().splitlines()
    lines[3] = f"{ids[3]}\tnot base64 at all!!"
    tsv.write_text("\n".join(lines) + "\n")

    scrape = Scrape(client)
    added = client.post(
        f"/img/images/{name}",
        files=[("files", (f"{i}.jpg", jpeg(500 + i), "image/jpeg")) for i in range(2)],
    )
    assert added.status_code == 200, added.text
    assert [r["status"] for r in added.json()["results"]] == ["added", "added"]
    for query in ("红色的圆形", "蓝色的方形", "红色的圆形"):
        r = client.post("/img/search", json={"query": query, "collection": name, "top_k": 2})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 2
    first_id = added.json()["results"][0]["id"]
    by_image = client.post("/img/search/image", data={"image_id": str(first_id), "collection": name})
    assert by_image.status_code == 200, by_image.text
    assert client.get(f"/img/images/{name}/987654").status_code == 404
    assert client.post("/img/search", json={"query": "猫", "top_k": 0}).status_code == 422
    assert client.get("/no/such/path/12345").status_code == 404
    load = client.post(
        "/img/load",
        json={"dataset": "metds", "split": "valid", "collection": unique("metload")},
        headers={"X-Request-ID": "load-request-1"},
    )
    assert load.status_code == 202, load.text
    job = wait_job(client, load.json()["job_id"])
    assert (job["state"], job["processed"], job["failed"]) == ("succeeded", 11, 1), job
    # The job thread records its metrics before it records its end; its gauges come back to 0
    # just after: wait for them.
    deadline = time.time() + 30
    while scrape.again().now("imgsearch_jobs_running", kind="load") != 0:
        assert time.time() < deadline, "the load job is still counted as running"
        time.sleep(0.1)

    http = "imgsearch_http_requests_total"
    answered = {
        ("POST", "/img/images/{collection}", "200"): 1,
        ("POST", "/img/search", "200"): 3,
        ("POST", "/img/search/image", "200"): 1,
        ("GET", "/img/images/{collection}/{image_id}", "404"): 1,
        ("POST", "/img/search", "422"): 1,
        ("GET", "unmatched", "404"): 1,
        ("POST", "/img/load", "202"): 1,
    }
    for (method, route, status), n in answered.items():
        labels = {"method": method, "route": route, "status": status}
        assert scrape.delta(http, **labels) == n, labels
        assert scrape.delta("imgsearch_http_request_duration_seconds_count", **labels) == n, labels
        assert scrape.delta("imgsearch_http_request_duration_seconds_bucket", le="+Inf", **labels) == n
        assert scrape.delta("imgsearch_http_request_duration_seconds_sum", **labels) > 0
    # No raw path became a label: the ids and the unknown path appear nowhere.
    routes = {dict(labels).get("route") for (_, labels) in scrape.after}
    assert not any(r and ("987654" in r or "12345" in r or name in r) for r in routes)
    # The scrapes themselves are requests too.
    assert scrape.delta(http, method="GET", route="/metrics", status="200") >= 1

    # Stages: three text searches and one by a stored image.
    for stage in ("queue", "encode", "vector_search", "image_fetch", "total"):
        assert scrape.delta("imgsearch_search_stage_seconds_count", kind="text", stage=stage) == 3, stage
        assert scrape.delta("imgsearch_search_stage_seconds_count", kind="image", stage=stage) == 1, stage
    assert scrape.delta("imgsearch_search_stage_seconds_sum", kind="text", stage="vector_search") > 0
    # The repeated query came from the cache: two texts encoded, in two batches of one.
    assert scrape.delta("imgsearch_query_cache_requests_total", result="miss") == 2
    assert scrape.delta("imgsearch_query_cache_requests_total", result="hit") == 1
    assert scrape.delta("imgsearch_batch_size_count", batcher="tiny text encoder") == 2
    assert scrape.delta("imgsearch_batch_size_sum", batcher="tiny text encoder") == 2
    # Four vector searches asked the result cache; each miss went to Milvus in a batch of one (the
    # repeated query is a hit unless RESULT_CACHE_TTL_S passed between the two).
    result_hits = scrape.delta("imgsearch_result_cache_requests_total", result="hit")
    result_misses = scrape.delta("imgsearch_result_cache_requests_total", result="miss")
    assert (result_hits + result_misses, result_hits <= 1) == (4, True)
    assert scrape.delta("imgsearch_batch_size_count", batcher="vector search") == result_misses
    assert scrape.delta("imgsearch_batch_size_sum", batcher="vector search") == result_misses
    assert scrape.delta("imgsearch_admission_refused_total") == 0
    assert scrape.now("imgsearch_searches_in_flight") == 0
    assert scrape.now("imgsearch_batch_queue_depth", batcher="tiny text encoder") == 0
    assert scrape.delta("imgsearch_shed_total", batcher="tiny text encoder", reason="queue_full") == 0
    assert scrape.delta("imgsearch_add_results_total", status="added") == 2
    # The load job: 11 images loaded, the broken record failed.
    assert scrape.delta("imgsearch_jobs_started_total", kind="load") == 1
    assert scrape.delta("imgsearch_jobs_finished_total", kind="load", state="succeeded") == 1
    assert scrape.delta("imgsearch_job_items_total", kind="load", outcome="processed") == 11
    assert scrape.delta("imgsearch_job_items_total", kind="load", outcome="failed") == 1
    assert scrape.now("imgsearch_job_items_remaining", kind="load") == 0
    # Nothing failed in the stores, nothing answered 503.
    for store in ("milvus", sql):
        assert scrape.delta("imgsearch_store_errors_total", store=store) == 0
    assert not [
        k
        for k in scrape.after
        if k[0] == "imgsearch_unavailable_responses_total" and scrape.delta(k[0], **dict(k[1]))
    ]

    # The job's own log lines carry the id of the request that started it, and the job's id.
    job_lines = [r for r in caplog.records if r.name == "operations.load" and "load " in r.getMessage()]
    assert job_lines, [r.getMessage() for r in caplog.records]
    assert {(r.request_id, r.job_id) for r in job_lines} == {("load-request-1", job["id"])}


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("metrics"))
    svc = make_services(settings)
    with TestClient(create_app(settings, svc), raise_server_exceptions=False) as c:
        c.services = svc
        c.collection = unique("rid")
        assert c.post("/img/collections", json={"name": c.collection}).status_code == 201
        yield c


def test_request_id_is_echoed_when_sane_and_made_otherwise(lite):
    for sent in ("abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "trace.id:7_X", "x" * 128):
        r = lite.get("/healthz", headers={"X-Request-ID": sent})
        assert r.headers["X-Request-ID"] == sent
    made = set()
    for sent in (None, "", "has space", "x" * 129, "<script>", 'quote"d', "semi;colon", "caf\u00e9"):
        headers = {} if sent is None else {"X-Request-ID": sent.encode("latin-1")}
        got = lite.get("/healthz", headers=headers).headers["X-Request-ID"]
        assert HEX32.fullmatch(got), (sent, got)
        made.add(got)
    assert len(made) == 8  # a new one each time


def test_every_answer_carries_its_request_id(lite):
    """Errors too: a 404 no route knows, a 422, a 413 refused before routing, a 500."""
    assert lite.get("/no/such", headers={"X-Request-ID": "r404"}).headers["X-Request-ID"] == "r404"
    r = lite.post("/img/search", json={"query": ""}, headers={"X-Request-ID": "r422"})
    assert (r.status_code, r.headers["X-Request-ID"]) == (422, "r422")
    big = lite.post(
        "/img/search",
        content=b"x" * (9 * 1024 * 1024),
        headers={"X-Request-ID": "r413", "content-type": "application/json"},
    )
    assert (big.status_code, big.headers["X-Request-ID"]) == (413, "r413")

    def broken() -> dict:
        raise RuntimeError("a bug")

    scrape = Scrape(lite)
    serving = lite.services.serving
    serving.stats, original = broken, serving.stats
    try:
        r = lite.get("/img/stats", headers={"X-Request-ID": "r500"})
    finally:
        serving.stats = original
    assert (r.status_code, r.headers["X-Request-ID"]) == (500, "r500")
    scrape.again()
    # Counted with their route: the 413 was refused before routing, the 500 answered by the error
    # middleware, which the request metrics wrap.
    assert scrape.delta("imgsearch_http_requests_total", method="GET", route="/img/stats", status="500") == 1


def test_a_refused_body_is_counted_under_its_route(lite):
    scrape = Scrape(lite)
    r = lite.post(
        "/img/search", content=b"x" * (9 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    scrape.again()
    assert (
        scrape.delta("imgsearch_http_requests_total", method="POST", route="/img/search", status="413") == 1
    )


def test_log_lines_carry_the_request_id(lite, caplog):
    caplog.set_level(logging.INFO)
    r = lite.post(
        "/img/search",
        json={"query": "红色", "collection": lite.collection, "top_k": 1},
        headers={"X-Request-ID": "find-me-42"},
    )
    assert r.status_code == 200, r.text
    mine = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "find-me-42"]
    loggers = {rec.name for rec in mine}
    # The search's own line (written on a worker thread) and the access line.
    assert {"operations.search", "app.access"} <= loggers, [(x.name, x.getMessage()) for x in mine]
    access = next(rec for rec in mine if rec.name == "app.access")
    assert access.getMessage().startswith("POST /img/search 200 ")
    # A line outside any request has no id.
    logging.getLogger("tests.metrics").warning("outside")
    outside = [rec for rec in caplog.records if rec.getMessage() == "outside"]
    assert outside[0].request_id == "-"


def test_metrics_key_is_optional_and_configurable(tmp_path):
    """Open by default even with API_KEY set (like /healthz); METRICS_REQUIRE_API_KEY closes it;
    METRICS_ENABLED=false removes it."""
    for require, enabled, sent, want in (
        (False, True, None, 200),
        (True, True, None, 401),
        (True, True, "wrong", 401),
        (True, True, "s3cret", 200),
        (False, False, None, 404),
    ):
        settings = make_settings(
            tmp_path, api_key="s3cret", metrics_require_api_key=require, metrics_enabled=enabled
        )
        app = create_app(settings, services=make_services(settings))
        with TestClient(app) as c:
            headers = {"X-API-Key": sent} if sent else {}
            r = c.get("/metrics", headers=headers)
            assert r.status_code == want, (require, enabled, sent, r.text)
            if want == 200:
                assert "# TYPE imgsearch_http_requests_total counter" in r.text
            else:
                assert r.json()["error"]["code"] == ("unauthorized" if want == 401 else "not_found")
        app.state.services.vectors.close()
        app.state.services.images.close()


def test_openmetrics_on_request(lite):
    r = lite.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def dashboard_metric_names(dashboard: dict) -> set[str]:
    """Every metric name the dashboard's queries (panels and variables) use."""
    text = json.dumps(dashboard)
    return set(re.findall(r"\b((?:imgsearch|process|python)_[a-z0-9_]+)\b", text))


def test_the_dashboard_queries_only_metrics_that_exist(lite):
    # After traffic of every kind, so that labelled metrics have series too (not needed for the
    # names, which /metrics declares either way).
    lite.post("/img/search", json={"query": "红色", "collection": lite.collection, "top_k": 1})
    declared = metric_families(lite.get("/metrics").text)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = dashboard_metric_names(dashboard)
    assert used - set(declared) == set()
    # The dashboard shows every family of ours.
    ours = {n.removesuffix("_bucket") for n in declared if n.startswith("imgsearch_")}
    ours = {n for n in ours if not n.endswith(("_sum", "_count"))}
    shown = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in used}
    assert ours - shown == set()
    # Every panel query names a datasource and a metric.
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert dashboard_metric_names({"expr": target["expr"]}), target


def test_the_dashboard_check_catches_a_wrong_name(lite):
    declared = metric_families(lite.get("/metrics").text)
    planted = {"panels": [{"targets": [{"expr": "rate(imgsearch_http_request_total[5m])"}]}]}
    assert dashboard_metric_names(planted) - set(declared) == {"imgsearch_http_request_total"}
