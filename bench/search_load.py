"""Closed-loop load against a running server: N keep-alive clients, each sending its
next request as soon as the previous one is answered (after a 503, it first waits
the Retry-After it was given, at most 1 s, as a well-behaved client does).

Used by `bench.bench_search --sweep`: the concurrency sweep, the shedding run past the
queue limit, the repeated-query (cache hit) run and the mixed read/write run.
The clients are asyncio tasks with one connection each: bench/raw_http.py's lean client
by default (0.3-0.6 ms of CPU a request here), or httpx.AsyncClient (`generator="httpx"`:
1.2-2 ms). The generator shares the machine's cores with the server, Milvus and MariaDB
(its CPU a request is reported), so the lean one leaves the server what it would have
with its clients on other machines.

The clients are built before the clock starts, httpx's all on one SSL context: it builds a
context per client otherwise (it reads the CA bundle, ~30-40 ms each), and 256 clients
built inside their tasks held the generator's event loop for about 10 s, longer than
the warm-up, so late answers were read seconds after they arrived and counted as the
server's latency. Each run reports the generator's own event-loop lag (a 10 ms timer's
overshoot, p99 and max) beside its figures: a lag near the latencies means the
generator, not the server, set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench._common import median, pct

STAGES = ("queue", "encode", "vector_search", "image_fetch")
# The clients' HTTP implementation: the lean one (bench/raw_http.py, the default: it leaves
# the cores to the server) or httpx (what the sweeps before 2026-12-04's thirteenth session used).
GENERATORS = ("raw", "httpx")


@dataclass
class Sample:
    role: str
    status: int
    latency_ms: float
    timings: dict | None = None
    retry_after: str | None = None


@dataclass
class RunResult:
    label: str
    clients: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    stats_delta: dict = field(default_factory=dict)
    # The generator's event-loop lag during the run, ms: {"p99": ..., "max": ...}.
    generator_lag_ms: dict = field(default_factory=dict)
    # CPU seconds each process spent between the two reads ({} when not probed), and the
    # seconds between the reads (the reads run on the generator's loop: a few ms late at times).
    cpu_s: dict = field(default_factory=dict)
    cpu_read_s: float = 0.0

    def _cpu_rates(self) -> dict:
        # CPU seconds per second of each process, over the reads' own interval.
        return {k: v / self.cpu_read_s for k, v in self.cpu_s.items()} if self.cpu_read_s > 0 else {}

    def cpu_ms_per_answer(self) -> dict:
        """CPU ms per answer (any status) of each probed process, and their total: its CPU rate
        times the window, over the answers that arrived in the window."""
        rates = self._cpu_rates()
        if not rates or not self.samples:
            return {}
        out = {k: round(r * self.seconds * 1000 / len(self.samples), 2) for k, r in rates.items()}
        out["total"] = round(sum(rates.values()) * self.seconds * 1000 / len(self.samples), 2)
        return out

    def cores_busy(self) -> float | None:
        """CPU seconds of the probed processes per second."""
        rates = self._cpu_rates()
        return round(sum(rates.values()), 2) if rates else None

    def of(self, role: str | None = None) -> list[Sample]:
        return [s for s in self.samples if role is None or s.role == role]

    def summary(self, role: str | None = None) -> dict:
        """QPS (answered 200 per second), latency percentiles of the 200s, stage medians,
        errors (neither 200 nor 503) and 503s with their latency."""
        samples = self.of(role)
        ok = [s for s in samples if s.status == 200]
        shed = [s for s in samples if s.status == 503]
        errors = [s for s in samples if s.status not in (200, 503)]
        lat = [s.latency_ms for s in ok]
        out = {
            "clients": self.clients,
            "requests": len(samples),
            "ok": len(ok),
            "qps": round(len(ok) / self.seconds, 1) if self.seconds else 0.0,
            "median_ms": round(median(lat), 1) if lat else None,
            "p90_ms": round(pct(lat, 90), 1) if lat else None,
            "p99_ms": round(pct(lat, 99), 1) if lat else None,
            "errors": len(errors),
            "error_examples": sorted({s.status for s in errors})[:5],
            "shed_503": len(shed),
            "shed_median_ms": round(median([s.latency_ms for s in shed]), 1) if shed else None,
            "shed_p99_ms": round(pct([s.latency_ms for s in shed], 99), 1) if shed else None,
            "shed_with_retry_after": sum(1 for s in shed if s.retry_after),
        }
        timed = [s for s in ok if s.timings]
        for stage in STAGES:
            out[f"{stage}_ms"] = (
                round(median([s.timings.get(stage, 0.0) for s in timed]), 2) if timed else None
            )
        if timed:
            out["other_ms"] = round(
                median([s.timings["total"] - sum(s.timings.get(k, 0.0) for k in STAGES) for s in timed]), 2
            )
            out["http_ms"] = round(median([s.latency_ms - s.timings["total"] for s in timed]), 2)
        return out


class QueryStream:
    """Distinct queries, never one twice in this process (thread-safe enough for asyncio)."""

    def __init__(self, texts: Iterator[str]) -> None:
        self._it = texts

    def next(self) -> str:
        return next(self._it)


# A request maker gets (client index, request number) and returns the role label and
# an async function that sends the request with the client given to it.
RequestMaker = Callable[[int, int], tuple[str, Callable]]


async def _client_loop(
    client, idx: int, make: RequestMaker, start_at: float, end_at: float, out: list[Sample]
) -> None:
    import httpx

    from bench.raw_http import RawHttpError

    for seq in itertools.count():
        now = time.perf_counter()
        if now >= end_at:
            return
        role, send = make(idx, seq)
        if role == "idle":
            await send(client)
            continue
        t = time.perf_counter()
        try:
            r = await send(client)
            status = r.status_code
            body = r.json() if status == 200 and "json" in r.headers.get("content-type", "") else None
            retry = r.headers.get("retry-after")
        except (httpx.HTTPError, RawHttpError):
            status, body, retry = 599, None, None
        done = time.perf_counter()
        dt = (done - t) * 1000
        # Every answer that arrives inside the window counts (throughput = answers per
        # second of the window), also one whose request left during the warm-up.
        if start_at <= done <= end_at:
            timings = body.get("timings_ms") if isinstance(body, dict) else None
            out.append(Sample(role, status, dt, timings, retry))
        if status == 503 and retry:
            await asyncio.sleep(min(float(retry), 1.0))


async def _watch_lag(start_at: float, end_at: float, lags: list[float]) -> None:
    """How late a 10 ms timer fires on the generator's loop, during the measured window."""
    while (now := time.perf_counter()) < end_at:
        await asyncio.sleep(0.01)
        if now >= start_at:
            lags.append((time.perf_counter() - now - 0.01) * 1000)


async def _cpu_window(start_at: float, end_at: float, cpu: Callable[[], dict]) -> tuple[dict, float]:
    """CPU seconds of each process (`cpu()`: cumulative seconds by name) between reads at the
    window's ends, and the seconds between the reads."""
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    t0, before = time.perf_counter(), cpu()
    await asyncio.sleep(max(0.0, end_at - time.perf_counter()))
    t1, after = time.perf_counter(), cpu()
    return {k: after[k] - before[k] for k in after if k in before}, t1 - t0


def run_closed_loop(
    url: str,
    label: str,
    clients: int,
    make: RequestMaker,
    duration_s: float,
    warmup_s: float,
    stats=None,
    cpu: Callable[[], dict] | None = None,
    generator: str = "raw",
) -> RunResult:
    """`clients` closed-loop clients for warm-up + duration; samples from after the warm-up.
    `cpu`: cumulative CPU seconds by process, read at the window's start and end.
    `generator`: "raw" (bench.raw_http, the lean client) or "httpx" (httpx.AsyncClient)."""
    import httpx

    from bench.raw_http import RawHttpClient

    if generator not in GENERATORS:
        raise ValueError(f"generator {generator!r}: one of {GENERATORS}")

    lags: list[float] = []
    cpu_read: list[tuple[dict, float]] = []  # (CPU seconds by process, seconds between the reads)

    async def read_cpu(start_at: float, end_at: float) -> None:
        if cpu is not None:
            cpu_read.append(await _cpu_window(start_at, end_at, cpu))

    async def main() -> list[Sample]:
        out: list[Sample] = []
        if generator == "httpx":
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            shared_ssl = ssl.create_default_context()  # unused on http://, but httpx builds one per client

        def new_client():
            if generator == "raw":
                return RawHttpClient(url, timeout=120)
            return httpx.AsyncClient(base_url=url, timeout=120, limits=limits, verify=shared_ssl)

        async with contextlib.AsyncExitStack() as stack:
            pool = [await stack.enter_async_context(new_client()) for _ in range(clients)]
            begin = time.perf_counter()  # after the clients exist: building them is not load
            start_at, end_at = begin + warmup_s, begin + warmup_s + duration_s
            await asyncio.gather(
                _watch_lag(start_at, end_at, lags),
                read_cpu(start_at, end_at),
                *(_client_loop(c, i, make, start_at, end_at, out) for i, c in enumerate(pool)),
            )
        return out

    before = stats() if stats else {}
    samples = asyncio.run(main())
    after = stats() if stats else {}
    lag = {"p99": round(pct(lags, 99), 1), "max": round(max(lags), 1)} if lags else {}
    cpu_s, read_s = cpu_read[0] if cpu_read else ({}, 0.0)
    return RunResult(label, clients, duration_s, samples, _delta(before, after), lag, cpu_s, read_s)


def _delta(before: dict, after: dict) -> dict:
    """Batches and items formed during the run, per batcher (from GET /img/stats)."""
    out = {}
    for name, now in {**after.get("encoders", {}), "vector search": after.get("vector_search", {})}.items():
        was = before.get("encoders", {}).get(name) if name != "vector search" else before.get("vector_search")
        was = was or {}
        batches = now.get("batches", 0) - was.get("batches", 0)
        items = now.get("items", 0) - was.get("items", 0)
        if batches:
            out[name] = {
                "batches": batches,
                "mean_batch": round(items / batches, 2),
                "shed": now.get("shed_full", 0)
                + now.get("shed_deadline", 0)
                - was.get("shed_full", 0)
                - was.get("shed_deadline", 0),
            }
    cache_now, cache_was = after.get("query_cache", {}), before.get("query_cache", {})
    if cache_now:
        out["query cache"] = {
            "hits": cache_now.get("hits", 0) - cache_was.get("hits", 0),
            "misses": cache_now.get("misses", 0) - cache_was.get("misses", 0),
        }
    return out


def text_search(queries: QueryStream, collection: str, top_k: int, repeat: str | None = None) -> Callable:
    """A maker of text searches: distinct queries, or always `repeat`."""

    def make(_idx: int, _seq: int):
        q = repeat if repeat is not None else queries.next()

        async def send(client):
            return await client.post(
                "/img/search", json={"query": q, "top_k": top_k, "collection": collection}
            )

        return "text", send

    return make


def mixed(
    queries: QueryStream,
    collection: str,
    top_k: int,
    roles: list[str],
    images: list[bytes],
    fresh_image: Callable[[int], bytes],
) -> Callable:
    """Clients by role: text, image (search by upload), add (one new image), delete (one
    of the images the adders added; idle while there is none)."""
    added: deque[int] = deque()
    counter = itertools.count()

    def make(idx: int, seq: int):
        role = roles[idx % len(roles)]
        if role == "text":
            return text_search(queries, collection, top_k)(idx, seq)
        if role == "image":
            data = images[(idx * 7919 + seq) % len(images)]

            async def send(client):
                return await client.post(
                    "/img/search/image",
                    files={"file": ("q.jpg", data, "image/jpeg")},
                    data={"top_k": str(top_k), "collection": collection},
                )

            return "image", send
        if role == "add":
            data = fresh_image(next(counter))

            async def send(client):
                r = await client.post(
                    f"/img/images/{collection}",
                    files=[("files", ("new.jpg", data, "image/jpeg"))],
                    data={"source": "bench"},
                )
                if r.status_code == 200:
                    for item in r.json().get("results", []):
                        if item.get("status") == "added":
                            added.append(int(item["id"]))
                return r

            return "add", send
        if added:
            image_id = added.popleft()

            async def send(client):
                return await client.delete(f"/img/images/{collection}/{image_id}")

            return "delete", send

        async def idle(_client):
            await asyncio.sleep(0.02)

        return "idle", idle

    return make
