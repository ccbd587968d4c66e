"""Every Prometheus metric of the service, defined here and nowhere else.

`GET /metrics` (app/routes/metrics.py) exposes them with prometheus_client's
process and platform collectors; the sample dashboard
(deploy/grafana/imgsearch.json) queries them by these names. The objects live
in prometheus_client's default registry and count for the whole process: one
process, one `/metrics`. Several replicas are scraped one by one (each pod,
each port); prometheus_client's multiprocess mode (several uvicorn workers
behind one port) is not set up, because the service runs one worker per
process (Milvus Lite is single-process, and the batchers and the query cache
are per process).

Labels hold only values from a small fixed set, never request data: a route
is its template (`/img/images/{collection}/{image_id}`, not the path), a batcher
its name (one per model and kind), a store its family (milvus, mysql, sqlite),
a job its kind. This module imports nothing of ours, so the stores may count
into it too.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No `_created` series beside every counter and histogram: Prometheus' own text format does
# not use them, and they double what a scrape carries.
disable_created_metrics()

# Seconds: from a cached search (a few ms) to a store call that hits its timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# --- HTTP (recorded by app/observability.py) -----------------------------------
HTTP_REQUESTS = Counter(
    "imgsearch_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "imgsearch_http_request_duration_seconds",
    "Time from the request's arrival to the last byte of its answer",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge("imgsearch_http_requests_in_progress", "HTTP requests being answered now")
UNAVAILABLE = Counter(
    "imgsearch_unavailable_responses_total",
    "503 answers by cause: the dependency (milvus, mysql, sqlite, model, jobs) or overloaded",
    ["cause"],
)

# --- search stages (operations/search.py, operations/relevance/search.py) --------
SEARCH_STAGE = Histogram(
    "imgsearch_search_stage_seconds",
    "Time of one search's stages (queue, decode, encode, text_search, vector_search, image_fetch, total), "
    "by kind (text, image, composed)",
    ["kind", "stage"],
    buckets=STAGE_BUCKETS,
)

# --- serving: batchers and the query cache (operations/batching.py, query_cache.py) --
BATCH_SIZE = Histogram(
    "imgsearch_batch_size",
    "Items in each batch a batcher ran (an encoder's forward pass, a grouped vector search)",
    ["batcher"],
    buckets=BATCH_BUCKETS,
)
BATCH_RUN = Histogram(
    "imgsearch_batch_run_seconds", "Time one batch took to run", ["batcher"], buckets=STAGE_BUCKETS
)
QUEUE_DEPTH = Gauge("imgsearch_batch_queue_depth", "Items waiting in a batcher's queue", ["batcher"])
SHED = Counter(
    "imgsearch_shed_total",
    "Items a batcher refused (503 overloaded): queue full, or past their deadline",
    ["batcher", "reason"],
)
QUERY_CACHE = Counter(
    "imgsearch_query_cache_requests_total", "Query-text embedding cache lookups: hit or miss", ["result"]
)
RESULT_CACHE = Counter(
    "imgsearch_result_cache_requests_total", "Vector-search result cache lookups: hit or miss", ["result"]
)
SEARCHES_IN_FLIGHT = Gauge(
    "imgsearch_searches_in_flight", "Searches admitted and not finished (MAX_IN_FLIGHT)"
)
ADMISSION_REFUSED = Counter(
    "imgsearch_admission_refused_total",
    "Searches refused at once (503 overloaded): MAX_IN_FLIGHT in progress",
)

ADD_RESULTS = Counter(
    "imgsearch_add_results_total",
    "Images an add handled (a request or a folder job), by status: added, present, failed",
    ["status"],
)
REPAIRED_ROWS = Counter(
    "imgsearch_repaired_rows_total",
    "Rows a dead add or load left without their vector that a repair indexed (the periodic "
    "repair, a folder add's, the command line's)",
)

# --- background jobs (operations/jobs.py, operations/progress.py) ------------------
JOBS_STARTED = Counter("imgsearch_jobs_started_total", "Background jobs that started running", ["kind"])
JOBS_FINISHED = Counter(
    "imgsearch_jobs_finished_total",
    "Background jobs that ended, by state (succeeded, failed, cancelled; interrupted: handed back "
    "at a stop; lost: taken over by another replica)",
    ["kind", "state"],
)
JOBS_RUNNING = Gauge("imgsearch_jobs_running", "Background jobs running now", ["kind"])
JOB_ITEMS = Counter(
    "imgsearch_job_items_total", "Items background jobs processed or failed", ["kind", "outcome"]
)
JOB_ITEMS_REMAINING = Gauge(
    "imgsearch_job_items_remaining",
    "Items the running jobs still have to do (jobs that know their total)",
    ["kind"],
)

# --- stores (operations/stores/outage.py) ------------------------------------------
STORE_ERRORS = Counter(
    "imgsearch_store_errors_total",
    "Store calls that failed because the store could not be reached or did not answer in time",
    ["store"],
)
STORE_OUTAGES = Counter(
    "imgsearch_store_outages_total", "Times a store went down (the first failed call of an outage)", ["store"]
)


def observe_search(kind: str, timings_ms: dict[str, float]) -> None:
    """Record the stages of one finished search (its `timings_ms`)."""
    for stage, ms in timings_ms.items():
        SEARCH_STAGE.labels(kind, stage).observe(ms / 1000)
