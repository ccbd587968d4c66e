"""The bench's load generator (bench/search_load.py): every client's answers are counted in the
window, 503s are waited out, and the generator reports its own event-loop lag."""

from __future__ import annotations

import itertools
import time

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench import search_load as sl
from tests.browser.support import ServerThread


def _app() -> Starlette:
    counter = itertools.count()

    async def search(request):
        n = next(counter)
        if n % 5 == 4:  # every fifth request is shed
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "0.05"})
        return JSONResponse({"results": [], "timings_ms": {"total": 1.0, "encode": 0.5}})

    return Starlette(routes=[Route("/img/search", search, methods=["POST"])])


@pytest.mark.services  # starts uvicorn
def test_clients_are_counted_503s_waited_out_and_the_generators_lag_reported():
    server = ServerThread(_app()).start()
    try:
        queries = sl.QueryStream(f"query {i}" for i in itertools.count())
        # A "CPU" that is the wall clock (one core always busy) and one that never moves.
        res = sl.run_closed_loop(
            server.url,
            "t",
            32,
            sl.text_search(queries, "c", 10),
            0.5,
            0.2,
            cpu=lambda: {"clock": time.perf_counter(), "idle": 7.0},
        )
    finally:
        server.stop()
    s = res.summary("text")
    assert s["ok"] > 32 and s["shed_503"] > 0 and s["errors"] == 0, s
    assert s["shed_with_retry_after"] == s["shed_503"]
    assert s["encode_ms"] == 0.5
    assert set(res.generator_lag_ms) == {"p99", "max"} and res.generator_lag_ms["max"] >= 0
    assert 0.4 < res.cpu_s["clock"] < 0.6 and res.cpu_s["idle"] == 0.0, res.cpu_s
    assert res.cores_busy() == 1.0
    per = res.cpu_ms_per_answer()  # one busy core over the 0.5 s window, shared by its answers
    assert per["idle"] == 0.0 and per["clock"] == per["total"]
    # cpu_ms_per_answer rounds to 0.01 ms: with the lean generator's ~1,500 answers that is
    # more than 1% of the ~0.33 ms each gets.
    assert per["clock"] == pytest.approx(500 / len(res.samples), rel=0.01, abs=0.006)
