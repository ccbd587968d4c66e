"""What one search costs in CPU, and so how many searches a second a machine can serve at most.

    python -m bench.bench_capacity [--n 31783] [--batches 1,4,8,12,16,32] [--index FLAT|HNSW]
                                   [--int8] [--queries short|sweep] [--quick]

Issue 11's targets (a lone search <= 20 ms; 64 clients >= 100 searches/s) are set for FLAT and
the float32 text tower on 2 cores. The sweep (`bench_search --sweep`) shows where they stand;
this bench shows why, from the two stages that dominate a search, each measured on its own:

- **Vector stage**: N realistic 1024-d features (bench/realistic_features.py) in a collection
  of the Milvus 2.3 test server with the chosen index, searched with nq = 1, 4, 8, ... queries
  per call (top 10, Eventually consistency: the least work a search can do). Per call: wall
  median; per query: wall and the **CPU time the Milvus server spent** (utime + stime of its
  process tree from /proc, less its idle rate measured just before). Milvus 2.3 searches each
  query of a batch on its own (knowhere's brute force switches to BLAS only from 16,384 queries
  a call), so batching queries into one call saves calls, not scans.
- **Encode stage**: the service's own encoder (`ENCODER_BACKEND=auto`: ONNX when it verifies),
  RN50 architecture with random weights, a short Chinese query per row (`--queries sweep`: the
  sweep's own sentences, longer); per query at each batch size: wall and this process's CPU
  time; and a lone query on every core as the service runs it.
- **A scan in numpy** (one `vectors @ query` over the same matrix) as the memory floor of one
  FLAT query on this machine.

From these it prints two bounds (they leave out HTTP, SQL, Python and the event loop, which
the sweep shows at about 6 ms a search, so real figures are lower):

- a lone search cannot be faster than the lone encode plus one nq=1 search (wall);
- with both stages batched by b, the cores cannot serve more than
  cores / (encode CPU per query + Milvus CPU per query) searches a second.

`--index HNSW` (M 16, efConstruction 200, ef 64) and `--int8` (the int8 text tower) show what
the levers the issue leaves out would change. `--quick`: 5,000 vectors, fewer rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterator

import numpy as np

from bench._common import cpu_rate, machine, median, other_load, table, tree_cpu_s
from bench.bench_index import build_params, insert_all, int_list, new_collection

DIM = 1024
TARGET_LONE_MS = 20.0
TARGET_QPS = 100.0
QUERY = "一只在草地上奔跑的小狗 {}"


def vector_stage(
    client, name: str, pid: int, queries: np.ndarray, batches: list[int], per_batch: int, sp
) -> list:
    rows = []
    qs = queries.tolist()
    client.search(name, data=qs[:1], limit=10, search_params=sp, consistency_level="Eventually")
    for nq in batches:
        calls = max(8, per_batch // nq)
        idle = cpu_rate(pid, 3.0)  # with no request: its own timers and flushes
        times = []
        cpu0, t0 = tree_cpu_s(pid), time.perf_counter()
        for c in range(calls):
            start = (c * nq) % (len(qs) - nq)
            t = time.perf_counter()
            client.search(
                name, data=qs[start : start + nq], limit=10, search_params=sp, consistency_level="Eventually"
            )
            times.append((time.perf_counter() - t) * 1000)
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu_s(pid) - cpu0 - idle * elapsed
        rows.append(
            {
                "nq": nq,
                "calls": calls,
                "call_ms": round(median(times), 2),
                "wall_ms_per_query": round(median(times) / nq, 2),
                "milvus_cpu_ms_per_query": round(cpu * 1000 / (calls * nq), 2),
                "idle_cpu_rate": round(idle, 3),
            }
        )
        print(f"  vector nq={nq}: {rows[-1]}", flush=True)
    return rows


def query_texts(kind: str) -> Iterator[str]:
    """Distinct query texts: "short", one 14-character template numbered (the first runs'), or
    "sweep", the sweep's own sentences (bench_search.endless_queries: 9-33 characters, median
    22; an encode costs about its tokens)."""
    if kind == "sweep":
        from bench.bench_search import endless_queries

        return endless_queries(1)  # another seed than the sweep's: the same kind of sentences
    return (QUERY.format(i) for i in itertools.count())


def encode_stage(
    int8: bool, batches: list[int], per_batch: int, kind: str = "short"
) -> tuple[str, list, float]:
    from config.settings import load_settings
    from operations.encoding.base import on_every_core
    from operations.factory import build_encoder

    settings = load_settings(model_name="RN50", model_random_init=True, device="cpu", text_int8=int8)
    enc = build_encoder(settings)
    label = f"{type(enc).__name__}{' int8' if int8 else ''}"
    texts = query_texts(kind)
    enc.encode_texts([next(texts) for _ in range(8)])  # warm-up
    rows = []
    for b in batches:
        rounds = max(8, per_batch // b)
        times = []
        cpu0 = time.process_time()
        for _ in range(rounds):
            batch = [next(texts) for _ in range(b)]
            t = time.perf_counter()
            enc.encode_texts(batch)
            times.append((time.perf_counter() - t) * 1000 / b)
        cpu = time.process_time() - cpu0
        rows.append(
            {
                "batch": b,
                "wall_ms_per_query": round(median(times), 2),
                "cpu_ms_per_query": round(cpu * 1000 / (rounds * b), 2),
            }
        )
        print(f"  encode batch={b}: {rows[-1]}", flush=True)
    lone = []
    for _ in range(max(8, per_batch // 4)):
        q = next(texts)
        t = time.perf_counter()
        with on_every_core():
            enc.encode_texts([q])
        lone.append((time.perf_counter() - t) * 1000)
    return label, rows, round(median(lone), 2)


def numpy_scan_ms(vectors: np.ndarray, queries: np.ndarray, rounds: int) -> float:
    times = []
    for i in range(rounds):
        t = time.perf_counter()
        vectors @ queries[i % len(queries)]
        times.append((time.perf_counter() - t) * 1000)
    return round(median(times), 2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=31_783, help="vectors in the collection (the sweep's 31,783)")
    ap.add_argument("--batches", type=int_list, default=[1, 4, 8, 12, 16, 32])
    ap.add_argument("--index", choices=("FLAT", "HNSW"), default="FLAT")
    ap.add_argument("--int8", action="store_true", help="the int8 text tower (TEXT_INT8) instead of float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--queries",
        choices=("short", "sweep"),
        default="short",
        help="the encoded texts: a 14-character template, or the sweep's sentences (9-33 characters)",
    )
    ap.add_argument("--quick", action="store_true", help="5,000 vectors, fewer rounds")
    args = ap.parse_args(argv)
    per_batch = 64 if args.quick else 320
    if args.quick:
        args.n = min(args.n, 5000)

    from pymilvus import MilvusClient

    from bench.realistic_features import FeatureModel
    from scripts.dev_services import milvus_server

    cores = os.cpu_count() or 1
    load_before = other_load()
    print(f"load average before start: {load_before:.2f} ({cores} cores)", flush=True)
    t_all = time.perf_counter()
    model = FeatureModel(args.n, args.seed)
    vectors = np.asarray(model.rows(0, args.n), np.float32)
    queries = np.asarray(model.queries(256), np.float32)

    tower = "int8" if args.int8 else "float32"
    print(f"encoder (RN50 random weights, {tower} text tower, {args.queries} queries):", flush=True)
    enc_label, enc_rows, lone_encode_ms = encode_stage(args.int8, args.batches, per_batch, args.queries)
    scan_ms = numpy_scan_ms(vectors, queries, 20 if args.quick else 100)
    print(f"  lone query on every core: {lone_encode_ms} ms; numpy scan of {args.n:,} x {DIM}: {scan_ms} ms")

    with milvus_server() as mv:
        client = MilvusClient(uri=mv.uri, timeout=600)
        name = new_collection(client, "bench_capacity")
        try:
            insert_all(client, name, vectors)
            params = client.prepare_index_params()
            build = {} if args.index == "FLAT" else build_params("HNSW", args.n)
            params.add_index(field_name="vector", index_type=args.index, metric_type="IP", params=build)
            client.create_index(name, params, timeout=3600, sync=True)
            client.load_collection(name, timeout=3600)
            sp = {"metric_type": "IP", "params": {} if args.index == "FLAT" else {"ef": 64}}
            print(f"Milvus 2.3 server, {args.n:,} x {DIM}-d, {args.index} {sp['params']}:", flush=True)
            assert mv.pid is not None, "the Milvus server's pid is needed for its CPU time"
            vec_rows = vector_stage(client, name, mv.pid, queries, args.batches, per_batch, sp)
        finally:
            with contextlib.suppress(Exception):
                client.drop_collection(name, timeout=600)

    by_nq = {r["nq"]: r for r in vec_rows}
    lone_floor = lone_encode_ms + by_nq[min(by_nq)]["call_ms"]
    bounds = []
    for e in enc_rows:
        v = by_nq.get(e["batch"])
        if v is None:
            continue
        cpu_ms = e["cpu_ms_per_query"] + v["milvus_cpu_ms_per_query"]
        bounds.append(
            {
                "batch": e["batch"],
                "cpu_ms_per_search": round(cpu_ms, 2),
                "max_qps": round(cores * 1000 / cpu_ms, 1),
            }
        )

    print(f"\nencode ({enc_label}), per query:")
    print(
        table(
            ["batch", "wall ms", "CPU ms"],
            [[r["batch"], r["wall_ms_per_query"], r["cpu_ms_per_query"]] for r in enc_rows],
        )
    )
    print(f"\nvector stage ({args.index}, {args.n:,} x {DIM}-d, top 10), Milvus server CPU per query:")
    print(
        table(
            ["nq", "ms a call", "wall ms a query", "Milvus CPU ms a query"],
            [[r["nq"], r["call_ms"], r["wall_ms_per_query"], r["milvus_cpu_ms_per_query"]] for r in vec_rows],
        )
    )
    print(f"\nbounds on {cores} cores (HTTP, SQL and Python left out):")
    print(
        table(
            ["batch b", "CPU ms a search", "max searches/s", f"vs target {TARGET_QPS:.0f}"],
            [
                [b["batch"], b["cpu_ms_per_search"], b["max_qps"], f"{b['max_qps'] / TARGET_QPS:.2f}x"]
                for b in bounds
            ],
        )
    )
    print(
        f"lone search floor: encode on every core {lone_encode_ms} ms"
        f" + nq=1 search {by_nq[min(by_nq)]['call_ms']} ms"
        f" = {lone_floor:.1f} ms (target {TARGET_LONE_MS:.0f} ms: {lone_floor / TARGET_LONE_MS:.2f}x)"
    )
    total_s = time.perf_counter() - t_all
    print(f"total {total_s:.0f} s; load average before {load_before:.2f}, now {other_load():.2f}")
    print(
        json.dumps(
            {
                "bench": "capacity",
                "n": args.n,
                "index": args.index,
                "encoder": enc_label,
                "queries": args.queries,
                "quick": args.quick,
                "encode": enc_rows,
                "lone_encode_ms": lone_encode_ms,
                "numpy_scan_ms": scan_ms,
                "vector": vec_rows,
                "bounds": bounds,
                "lone_floor_ms": round(lone_floor, 1),
                "machine": machine(),
                "load_before": load_before,
                "load_after": other_load(),
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
