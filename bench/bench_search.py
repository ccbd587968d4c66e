"""End-to-end search through a real uvicorn server: latency per variant, or (--sweep)
serving many clients at once.

    python -m bench.bench_search --sweep [--quick] [--duration 20] [--clients 1,4,16,64]
                                 [--levers] [--no-variants]
    python -m bench.bench_search [--quick] [--n 31783] [--queries 200] [--warmup 20]
                                 [--indexes FLAT,HNSW] [--texts fp32,int8] [--levels Adaptive]

--sweep (issue 11's figures): the 31,783-image split in a FLAT collection on the
Milvus 2.3 server + MariaDB, RN50 architecture with random weights on CPU, and
servers run one after the other in the same bench: "baseline" = the torch encoder
without batching (ENCODER_BACKEND=torch, BATCH_WINDOW_MS=0, QUERY_CACHE_SIZE=0,
RESULT_CACHE_SIZE=0, WORKER_THREADS=4, no load shedding or admission limit), and "new" =
the defaults (ENCODER_BACKEND=auto: ONNX when it verifies; micro-batching, query and
result caches, shedding, MAX_IN_FLIGHT); then two variants of "new" at a few levels only:
"new, no spread" (ENCODER_SPREAD_LONE_QUERY=false: a lone query stays on its one encoder
thread; 1 and 4 clients) and "new, 2 shards" (a copy of the collection made with
MILVUS_SHARDS=2; 1, 4 and 64 clients); `--no-variants` skips those two. `--levers` adds
three servers at 1 and 64 clients for what the targets' setup (FLAT, the float32 text
tower) leaves out: "lever: int8 text" (TEXT_INT8=true), "lever: HNSW" (the split loaded
again into an HNSW collection: M 16, efConstruction 200, ef 64) and "lever: HNSW + int8".
Per server, a
closed-loop sweep of 1, 4, 16 and 64 keep-alive clients sending distinct Chinese
queries (bench/search_load.py) prints QPS, median, p90, p99, errors, 503s and the
stage split (medians of timings_ms: queue, encode, vector_search, image_fetch, other
in the operation, HTTP overhead), plus the batches formed (GET /img/stats). Then, on
the new server only: 256 clients (past MAX_IN_FLIGHT: 503 + Retry-After expected, and
how fast), one client repeating one query (cache hits: the query and result caches), and 8 clients read-only
(6 text + 2 image searches) against 8 clients mixed (4 text, 2 image searches, one
adding single images, one deleting them). Each issue target is printed beside its
figure, met or NOT met. Each server's runs start once the Milvus server is idle (at most
0.1 cores over 10 s; the wait is printed): after a load, and after the mixed run's writes, it
compacts and indexes in the background for minutes, which took up to a core from the runs
before this wait existed. Per run, the CPU each process spent per answer (the service,
Milvus, MariaDB, the generator itself) shows where the cores went. The clients are the lean
HTTP/1.1 client of bench/raw_http.py (`--generator httpx`: httpx.AsyncClient, as before
2026-12-04's thirteenth session); the new server also runs 1 and 64 clients with the other
generator, so the generator's own share is measured in the same run.

--lone-ab: one client (--ab-clients N: N clients) against four servers started together
and taking turns (--rounds turns of --duration seconds each, alternating order): the new
path with neither lever for a lone search, with the lone query spread over every core
(ENCODER_SPREAD_LONE_QUERY), with the collection in two shards (MILVUS_SHARDS=2), and
with both; the median of each server's round medians (latency, QPS, p99) and its ratio to
"neither".

Without --sweep: latency per variant, one client:

Set-up: a private MariaDB and the Milvus 2.3 server (scripts.dev_services); the
31,783-image split of bench.gen_split loaded with our loader
(`operations.load.load_split`, model name "RN50") once per index: FLAT
(exact) and HNSW (M=16, efConstruction=200, search ef=64). One server per
consistency level (`--levels`, default the service's default, Adaptive:
Strong reads for 10 s after this process wrote, Bounded otherwise) runs the
real entry point `python -m app.main` (uvicorn, one worker), with
MODEL_NAME=RN50 and random weights (MODEL_RANDOM_INIT=true: the real RN50
architecture and compute, 1024-d like the features), on CPU; one server per
text tower (`--texts`): fp32 (the default) and int8 (TEXT_INT8=true). Timing
starts once Milvus' query nodes serve every row from sealed, indexed
segments (the wait is printed; until then they search growing segments).

An httpx client (keep-alive) sends the same varied Chinese sentences to every
(level, index) variant, alternating blocks of 10 queries between variants so a
drift of the machine hits all alike, after a warm-up on each. Reported per
variant: median, p90, p99, and each stage's median from the response's
`timings_ms` (encode, vector_search, image_fetch; "other in operation" =
total - stages) plus HTTP overhead (client latency - total: routing,
validation, JSON, the socket and the client). For HNSW, its recall@k against
FLAT's answers to the same queries; for int8, its top-k overlap with the fp32
tower's answers.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

from bench._common import (
    UvicornProcess,
    add_torch_threads_arg,
    last_json,
    machine,
    median,
    other_load,
    pct,
    run_child,
    table,
    thp_mode,
    tree_cpu_s,
    wait_quiet,
)
from bench.search_load import GENERATORS

REPO = Path(__file__).resolve().parent.parent

OUT = REPO / "bench" / "out"
COLLECTION = "bench_search"

WHO = [
    "一个男人",
    "一个女人",
    "两个孩子",
    "一位老人",
    "一只黑色的狗",
    "一只白色的猫",
    "一群年轻人",
    "一个穿红色衣服的女孩",
    "一个戴帽子的男孩",
    "一名骑手",
    "几个工人",
    "一对情侣",
    "一个小婴儿",
    "一位厨师",
    "一名足球运动员",
    "一个穿蓝色衬衫的人",
]
WHAT = [
    "在草地上奔跑",
    "骑着自行车",
    "在街上散步",
    "坐在长椅上",
    "在海边玩耍",
    "在厨房里做饭",
    "站在雪地里",
    "在舞台上唱歌",
    "在河里游泳",
    "在公园里踢足球",
    "抱着一个篮球",
    "在商店门口等待",
    "在山路上行走",
    "看着手机",
    "在桌子旁吃饭",
    "在水里冲浪",
]
WHEN = [
    "",
    "，阳光很好",
    "，天在下雨",
    "，傍晚时分",
    "，背景是高楼",
    "，周围有很多人",
    "，旁边有一棵大树",
    "，在夜晚的灯光下",
]


def queries(n: int, seed: int = 0) -> list[str]:
    """`n` distinct, varied Chinese sentences (deterministic)."""
    all_q = [w + a + c for w in WHO for a in WHAT for c in WHEN]
    random.Random(seed).shuffle(all_q)
    return all_q[:n]


def encode_check(qs: list[str], rounds: int = 3) -> dict:
    """In-process: the server's text encode (tokens padded to 52) against the same tokens
    with the all-padding tail trimmed (padding is masked out, so [CLS] is unchanged:
    checked with allclose). Evidence for a possible change, not what the server does."""
    import numpy as np
    import torch
    from cn_clip.clip import tokenize

    from operations.encoding.base import l2_normalise
    from operations.encoding.clip_encoder import ClipEncoder
    from operations.encoding.model_files import ModelSpec

    enc = ClipEncoder.load(ModelSpec(name="RN50", random_init=True, device="cpu"))
    padded, trimmed, max_diff = [], [], 0.0
    for q in qs[:5]:
        enc.encode_texts([q])  # warm-up
    for _ in range(rounds):
        for q in qs:
            t = time.perf_counter()
            a = enc.encode_texts([q])
            padded.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            tokens = tokenize([q], enc.context_length)
            used = int((tokens != 0).sum(1).max())
            with torch.no_grad():
                b = l2_normalise(enc.model.encode_text(tokens[:, :used]).float().numpy())
            trimmed.append((time.perf_counter() - t) * 1000)
            max_diff = max(max_diff, float(np.abs(a - b).max()))
    return {
        "padded_ms": round(median(padded), 2),
        "trimmed_ms": round(median(trimmed), 2),
        "speedup": round(median(padded) / median(trimmed), 2),
        "max_abs_diff": max_diff,
        "torch_threads": torch.get_num_threads(),
    }


def wait_until_sealed_served(uri: str, collection: str, n: int, timeout: float = 300.0) -> float:
    """Seconds until Milvus' query nodes serve all `n` rows from sealed segments.

    A load ends with a flush; the sealed segments get their index and are then
    handed to the query nodes, which until then search the rows as growing
    segments (measured: ~25-30 ms instead of ~10 ms at 20,000 rows). A user's
    searches speed up after this hand-off; the bench times the steady state and
    prints how long the hand-off took. (get_query_segment_info is not on
    MilvusClient; the bench reads it from the client's connection.)
    """
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    t = time.perf_counter()
    try:
        while True:
            segments = client._get_connection().get_query_segment_info(collection, timeout=30)
            if sum(int(s.num_rows) for s in segments) >= n:
                return time.perf_counter() - t
            if time.perf_counter() - t > timeout:
                raise RuntimeError(
                    f"{collection}: query nodes serve {sum(int(s.num_rows) for s in segments)} of "
                    f"{n} rows from sealed segments after {timeout:.0f} s"
                )
            time.sleep(1.0)
    finally:
        client.close()


def load_collection(mv, db, info, index: str, suffix: str = "", env: dict | None = None) -> dict:
    """Load the split into `{COLLECTION}_{index}{suffix}` by the bench loader, with `env` set;
    checks that the collection has the MILVUS_SHARDS that `env` asks for."""
    from pymilvus import MilvusClient

    from bench.bench_load import child_argv

    name = f"{COLLECTION}_{index.lower()}{suffix}"
    rc, out, err, _maxrss, _wall = run_child(
        child_argv("ours", mv, db, info, name, "--index", index), env=env
    )
    if rc != 0:
        raise RuntimeError(f"load failed:\n{err[-3000:]}")
    shards = MilvusClient(uri=mv.uri).describe_collection(name)["num_shards"]
    if shards != int((env or {}).get("MILVUS_SHARDS", 1)):
        raise RuntimeError(f"{name} has {shards} shards, not the {env} asked for")
    res = last_json(out)
    res["rate"] = res["loaded"] / res["seconds"]
    return res


WHERE = [
    "",
    "，照片很清晰",
    "，远处有山",
    "，镜头很近",
    "，画面有点模糊",
    "，颜色很鲜艳",
    "，黑白照片",
    "，从上往下拍",
    "，背景是蓝天",
    "，地上有落叶",
    "，旁边停着一辆车",
    "，身后有一座桥",
]


def endless_queries(seed: int = 0):
    """Distinct sentences for ever: all combinations shuffled, then again with a numbered suffix."""
    all_q = [w + a + c + d for w in WHO for a in WHAT for c in WHEN for d in WHERE]
    random.Random(seed).shuffle(all_q)
    round_ = 0
    while True:
        for q in all_q:
            yield q if round_ == 0 else f"{q}，第{round_}张"
        round_ += 1


BASELINE_ENV = {
    "ENCODER_BACKEND": "torch",
    "ENCODER_SPREAD_LONE_QUERY": "false",
    "BATCH_WINDOW_MS": "0",
    "QUERY_CACHE_SIZE": "0",
    "RESULT_CACHE_SIZE": "0",
    "WORKER_THREADS": "4",
    "QUEUE_LIMIT": "100000",
    "QUEUE_TIMEOUT_MS": "600000",
    "MAX_IN_FLIGHT": "100000",
}
NEW_ENV = {"ENCODER_BACKEND": "auto"}
# The new path with a lone query kept on its one encoder thread (as before the
# spread): run at 1 and 4 clients only, to show what the spread gives a single
# client and that it leaves a loaded server alone.
NO_SPREAD_ENV = {**NEW_ENV, "ENCODER_SPREAD_LONE_QUERY": "false"}
NO_SPREAD_LEVELS = (1, 4)
# The new path over a copy of the collection made with MILVUS_SHARDS=2 (its two
# shards' segments are searched in parallel): 1, 4 and 64 clients, to show what
# it gives a lone search and what it costs a loaded server.
TWO_SHARDS_ENV = {**NEW_ENV, "MILVUS_SHARDS": "2"}
TWO_SHARDS_LEVELS = (1, 4, 64)
TWO_SHARDS_SUFFIX = "_2shards"
# --levers: what the levers issue 11's targets leave out (they are set for FLAT and the
# float32 text tower) give the new path, at 1 and 64 clients: the int8 text tower
# (TEXT_INT8), an HNSW collection of the same split (M 16, efConstruction 200, ef 64), both.
INT8_ENV = {**NEW_ENV, "TEXT_INT8": "true"}
LEVER_LEVELS = (1, 64)
# The new server runs these levels once more with the generator not chosen (--generator):
# what the generator's own CPU, on the same two cores, costs the server's figures.
GENERATOR_LEVELS = (1, 64)
# Each server's runs start once Milvus uses at most this many cores (its idle rate is ~0.04).
QUIET_CORES = 0.1
LEVERS = ("lever: int8 text", "lever: HNSW", "lever: HNSW + int8")
TARGETS = {
    "single_median_ms": 20.0,
    "c64_qps": 100.0,
    "c64_p99_ms": 1000.0,
    "shed_p99_ms": 100.0,
    "cache_median_ms": 8.0,
    "mixed_ratio": 2.0,
}


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def run_sweep(args) -> None:
    """The --sweep bench (see the module docstring)."""
    import httpx

    from bench import search_load as sl
    from bench._common import services
    from bench.gen_split import QUICK_N, QUICK_POOL, ensure_split, fresh_jpegs

    quick = args.quick
    n = QUICK_N if quick else args.n
    duration = 3.0 if quick else args.duration
    warmup = 1.0 if quick else args.warmup_s
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    pool = QUICK_POOL if quick else 300
    info = ensure_split(n, args.seed, pool_size=pool)
    collection = f"{COLLECTION}_flat"
    query_images = fresh_jpegs(32, "query-images", pool_size=pool)
    fresh_tag = f"mixed-{time.time_ns()}"

    def fresh(i: int) -> bytes:
        return fresh_jpegs(1, f"{fresh_tag}-{i}", pool_size=pool)[0]

    print(
        f"load average before start: {other_load():.2f} (2 cores); transparent huge pages: {thp_mode()}",
        flush=True,
    )
    t_all = time.perf_counter()
    sharded = collection + TWO_SHARDS_SUFFIX
    hnsw = f"{COLLECTION}_hnsw"
    # (server, its settings, the collection it searches, the levels it runs: None = all)
    configs = [("baseline", BASELINE_ENV, collection, None), ("new", NEW_ENV, collection, None)]
    if not args.no_variants:
        configs += [
            ("new, no spread", NO_SPREAD_ENV, collection, NO_SPREAD_LEVELS),
            ("new, 2 shards", TWO_SHARDS_ENV, sharded, TWO_SHARDS_LEVELS),
        ]
    if args.levers:
        configs += [
            (LEVERS[0], INT8_ENV, collection, LEVER_LEVELS),
            (LEVERS[1], NEW_ENV, hnsw, LEVER_LEVELS),
            (LEVERS[2], INT8_ENV, hnsw, LEVER_LEVELS),
        ]
    results: dict[str, dict[str, dict]] = {name: {} for name, *_ in configs}
    batches: dict[str, dict[str, dict]] = {name: {} for name, *_ in configs}
    # CPU ms per answer by process and the cores they kept busy, per server and run.
    cpu: dict[str, dict[str, dict]] = {name: {} for name, *_ in configs}
    quiet: dict[str, dict] = {}  # how long each server's runs waited for Milvus to be idle
    backends: dict[str, str] = {}
    loads = [("FLAT", "", None)]
    if not args.no_variants:
        loads.append(("FLAT", TWO_SHARDS_SUFFIX, {"MILVUS_SHARDS": "2"}))
    if args.levers:
        loads.append(("HNSW", "", None))
    with services() as (db, mv):
        for index, suffix, env in loads:
            load = load_collection(mv, db, info, index, suffix, env)
            name = f"{COLLECTION}_{index.lower()}{suffix}"
            print(f"loaded {load['loaded']:,} images into {name} in {load['seconds']:.1f} s", flush=True)
            waited = wait_until_sealed_served(mv.uri, name, info.n)
            print(
                f"query nodes serve all rows from sealed segments {waited:.1f} s after the load", flush=True
            )
        base_env = {**server_env(mv, db, collection), "MAX_BATCH_UPLOAD": "16"}
        for name, extra, target, chosen in configs:
            env = {**base_env, **extra}
            print(f"\n== server {name}: {' '.join(f'{k}={v}' for k, v in extra.items())}", flush=True)
            # Milvus compacts and indexes in the background for minutes after a load (and after
            # the mixed run's writes): measured, it took up to a core from the first servers' runs.
            waited, rate = wait_quiet(mv.pid, QUIET_CORES)
            quiet[name] = {"waited_s": waited, "milvus_cores": rate}
            print(f"   Milvus quiet after {waited:.0f} s ({rate:.2f} cores over 10 s)", flush=True)
            log_name = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")  # "lever: HNSW" -> lever_HNSW
            with (
                # A first start with ENCODER_BACKEND=auto exports and verifies the ONNX towers.
                UvicornProcess(env, OUT / f"sweep_server_{log_name}.log", timeout=900) as srv,
                httpx.Client(base_url=srv.url, timeout=60) as c,
            ):
                ready = c.get("/readyz").json()
                backends[name] = ready.get("checks", {}).get("model", "?")
                print(f"   model: {backends[name]}", flush=True)

                def stats(c=c) -> dict:
                    r = c.get("/img/stats")
                    return r.json() if r.status_code == 200 else {}

                def cpu_now(srv=srv) -> dict:
                    # Cumulative CPU seconds of each process on the machine's cores; the generator
                    # is this process (its stats calls fall outside the measured window).
                    return {
                        "service": tree_cpu_s(srv.proc.pid),
                        "Milvus": tree_cpu_s(mv.pid),
                        "MariaDB": tree_cpu_s(db.pid),
                        "generator": time.process_time(),
                    }

                for q in ("热身", "一只猫", "两个人在街上走"):  # first passes pay lazy init
                    c.post("/img/search", json={"query": q, "collection": target})
                queries = sl.QueryStream(endless_queries(args.seed))
                by_generator: dict[str, str] = {}  # runs with the other generator, by label
                runs = [
                    (f"{k} clients", k, sl.text_search(queries, target, args.top_k))
                    for k in levels
                    if chosen is None or k in chosen
                ]
                if name == "new":
                    other = next(g for g in GENERATORS if g != args.generator)
                    for k in GENERATOR_LEVELS:
                        if k in levels:
                            label = f"{k} clients ({other} generator)"
                            by_generator[label] = other
                            runs.append((label, k, sl.text_search(queries, target, args.top_k)))
                    runs += [
                        (
                            f"{args.shed_clients} clients (past the limit)",
                            args.shed_clients,
                            sl.text_search(queries, collection, args.top_k),
                        ),
                        (
                            "1 client, one query repeated (cache)",
                            1,
                            sl.text_search(
                                queries, collection, args.top_k, repeat="一只黑色的狗在草地上奔跑"
                            ),
                        ),
                        (
                            "8 clients read-only (6 text, 2 image)",
                            8,
                            sl.mixed(
                                queries,
                                collection,
                                args.top_k,
                                ["text"] * 6 + ["image"] * 2,
                                query_images,
                                fresh,
                            ),
                        ),
                        (
                            "8 clients mixed (4 text, 2 image, add, delete)",
                            8,
                            sl.mixed(
                                queries,
                                collection,
                                args.top_k,
                                ["text", "image", "add", "text", "delete", "text", "image", "text"],
                                query_images,
                                fresh,
                            ),
                        ),
                    ]
                for label, clients, make in runs:
                    generator = by_generator.get(label, args.generator)
                    res = sl.run_closed_loop(
                        srv.url, label, clients, make, duration, warmup, stats, cpu_now, generator
                    )
                    summary = {
                        role: {**res.summary(role), "generator_lag_ms": res.generator_lag_ms}
                        for role in ("text", "image", "add", "delete")
                        if res.of(role)
                    }
                    results[name][label] = summary
                    batches[name][label] = res.stats_delta
                    cpu[name][label] = {
                        "ms_per_answer": res.cpu_ms_per_answer(),
                        "cores_busy": res.cores_busy(),
                    }
                    if not summary:
                        print(f"   {label:<48} no answer arrived within the window", flush=True)
                        continue
                    head = summary.get("text") or next(iter(summary.values()))
                    print(
                        f"   {label:<48} {head['qps']:7.1f} q/s  median {head['median_ms']} ms  "
                        f"p99 {head['p99_ms']} ms  errors {head['errors']}  503 {head['shed_503']}  "
                        f"generator loop lag p99/max {res.generator_lag_ms.get('p99')}/"
                        f"{res.generator_lag_ms.get('max')} ms",
                        flush=True,
                    )
    _print_sweep(results, batches, backends, levels, args, info.n, duration, warmup)
    _print_cpu(cpu)
    enc = None
    if not (quick or args.no_encode_check):
        enc = encode_batch_check()
        print("\ntext encode in-process, ms per query by batch size (median of 3 batches):")
        for label, by_size in enc.items():
            print(f"  {label:<28} " + "  ".join(f"batch {k}: {v}" for k, v in by_size.items()))
    print(f"total bench time {time.perf_counter() - t_all:.0f} s; load average now {other_load():.2f}")
    print(
        json.dumps(
            {
                "bench": "search_sweep",
                "n": info.n,
                "quick": quick,
                "machine": machine(),
                "duration_s": duration,
                "backends": backends,
                "results": results,
                "batches": batches,
                "cpu": cpu,
                "milvus_quiet": quiet,
                "encode_ms_per_query": enc,
            },
            ensure_ascii=False,
        )
    )


def encode_batch_check(backends: tuple[str, ...] = ("torch", "auto"), rounds: int = 3) -> dict:
    """In-process: text encode ms per query by batch size, per encoder backend (RN50 random
    weights, CPU, the service's own encoder and thread rules). Shows what batching can gain
    on this CPU: the sweep's throughput is bounded by it."""
    from config.settings import Settings, load_settings
    from operations.factory import build_encoder

    qs = endless_queries(1)
    out: dict[str, dict[int | str, float]] = {}
    for backend in backends:
        extra = {"encoder_backend": backend} if "encoder_backend" in Settings.model_fields else {}
        if not extra and backend != "torch":
            continue  # no ENCODER_BACKEND setting in this tree: torch only
        enc = build_encoder(load_settings(model_name="RN50", model_random_init=True, device="cpu", **extra))
        enc.encode_texts([next(qs) for _ in range(4)])  # warm-up
        label = f"{backend} ({type(enc).__name__})"
        out[label] = {}
        for size in (1, 4, 8, 16, 32):
            times = []
            for _ in range(rounds):
                batch = [next(qs) for _ in range(size)]
                t = time.perf_counter()
                enc.encode_texts(batch)
                times.append((time.perf_counter() - t) * 1000 / size)
            out[label][size] = round(median(times), 2)
        # A lone query as the serving layer runs it (ENCODER_SPREAD_LONE_QUERY): every core.
        from operations.encoding.base import on_every_core

        times = []
        for _ in range(rounds * 3):
            q = next(qs)
            t = time.perf_counter()
            with on_every_core():
                enc.encode_texts([q])
            times.append((time.perf_counter() - t) * 1000)
        out[label]["1 on every core"] = round(median(times), 2)
        del enc
    return out


def _print_sweep(results, batches, backends, levels, args, n, duration, warmup) -> None:
    print()
    print(
        f"POST /img/search under load: {n:,} images x 1024-d, FLAT, Milvus 2.3 server + MariaDB, RN50 "
        f"random weights on CPU; closed-loop keep-alive clients, distinct queries, {duration:.0f} s per row "
        f"after {warmup:.0f} s warm-up; milliseconds; stage columns are medians of timings_ms"
    )
    headers = [
        "server",
        "run",
        "QPS",
        "median",
        "p90",
        "p99",
        "errors",
        "503",
        "queue",
        "encode",
        "vector",
        "fetch",
        "other",
        "HTTP",
        "mean batch (enc/search)",
        "generator lag p99/max",
    ]
    rows = []
    for name in results:
        for label, by_role in results[name].items():
            for role, s in by_role.items():
                b = batches[name].get(label, {})
                enc = next((v["mean_batch"] for k, v in b.items() if k.endswith("text encoder")), None)
                vec = b.get("vector search", {}).get("mean_batch")
                rows.append(
                    [
                        name,
                        f"{label} [{role}]" if len(by_role) > 1 else label,
                        s["qps"],
                        s["median_ms"],
                        s["p90_ms"],
                        s["p99_ms"],
                        s["errors"],
                        s["shed_503"],
                        s.get("queue_ms"),
                        s.get("encode_ms"),
                        s.get("vector_search_ms"),
                        s.get("image_fetch_ms"),
                        s.get("other_ms"),
                        s.get("http_ms"),
                        f"{enc if enc is not None else '-'} / {vec if vec is not None else '-'}",
                        "{p99} / {max}".format(**s["generator_lag_ms"]) if s.get("generator_lag_ms") else "-",
                    ]
                )
    print(table(headers, [[_num(c) for c in r] for r in rows]))
    print("models: " + "; ".join(f"{name} {model}" for name, model in backends.items()))
    new, base, no_spread = results["new"], results["baseline"], results.get("new, no spread", {})
    two_shards = results.get("new, 2 shards", {})

    def get(res, label, role="text"):
        return res.get(label, {}).get(role, {})

    print("\nTargets (issue 11) against the new path:")
    one = get(new, "1 clients")
    if one:
        print(
            f"  single client: median <= {TARGETS['single_median_ms']:.0f} ms: {one['median_ms']} ms "
            f"-> {_met(one['median_ms'] is not None and one['median_ms'] <= TARGETS['single_median_ms'])}"
            f"  (baseline {get(base, '1 clients').get('median_ms')} ms)"
        )
    c64 = get(new, "64 clients")
    if c64:
        ok = (
            c64["qps"] >= TARGETS["c64_qps"]
            and (c64["p99_ms"] or 1e9) <= TARGETS["c64_p99_ms"]
            and c64["errors"] == 0
            and c64["shed_503"] == 0
        )
        print(
            f"  64 clients: >= {TARGETS['c64_qps']:.0f} QPS, p99 <= {TARGETS['c64_p99_ms']:.0f} ms, "
            "no errors, "
            f"none shed: {c64['qps']} QPS, p99 {c64['p99_ms']} ms, {c64['errors']} errors, "
            f"{c64['shed_503']} shed -> {_met(ok)}  (baseline {get(base, '64 clients').get('qps')} QPS, "
            f"p99 {get(base, '64 clients').get('p99_ms')} ms)"
        )
    shed = get(new, f"{args.shed_clients} clients (past the limit)")
    if shed:
        fast = shed["shed_503"] > 0 and (shed["shed_p99_ms"] or 1e9) <= TARGETS["shed_p99_ms"]
        fast = fast and shed["shed_with_retry_after"] == shed["shed_503"]
        print(
            f"  {args.shed_clients} clients: fast 503 + Retry-After (p99 of the 503s <= "
            f"{TARGETS['shed_p99_ms']:.0f} ms, every one with Retry-After): {shed['shed_503']} 503s, median "
            f"{shed['shed_median_ms']} ms, p99 {shed['shed_p99_ms']} ms, "
            f"{shed['shed_with_retry_after']} with Retry-After -> {_met(fast)}; the answered ones: "
            f"{shed['qps']} QPS, median {shed['median_ms']} ms, "
            f"p99 {shed['p99_ms']} ms, {shed['errors']} errors"
        )
    cache = get(new, "1 client, one query repeated (cache)")
    if cache:
        print(
            f"  repeated query (cache hit): median <= {TARGETS['cache_median_ms']:.0f} ms: "
            f"{cache['median_ms']} ms "
            f"-> {_met(cache['median_ms'] is not None and cache['median_ms'] <= TARGETS['cache_median_ms'])}"
        )
    ro = new.get("8 clients read-only (6 text, 2 image)", {})
    mx = new.get("8 clients mixed (4 text, 2 image, add, delete)", {})
    for role in ("text", "image"):
        if ro.get(role) and mx.get(role):
            ratio = mx[role]["median_ms"] / ro[role]["median_ms"]
            print(
                f"  mixed load, {role} search median within {TARGETS['mixed_ratio']:.0f}x of read-only: "
                f"{mx[role]['median_ms']} ms vs {ro[role]['median_ms']} ms = {ratio:.2f}x "
                f"-> {_met(ratio <= TARGETS['mixed_ratio'])}"
            )
    for role in ("add", "delete"):
        if mx.get(role):
            print(
                f"  mixed load, {role}: {mx[role]['ok']} done, median {mx[role]['median_ms']} ms, "
                f"p99 {mx[role]['p99_ms']} ms, errors {mx[role]['errors']}"
            )

    def compare(
        what: str, levels: tuple[int, ...], a_res: dict, b_res: dict, b_name: str, stage: str
    ) -> None:
        # One line per level: the variant `a_res` against `b_res`, with the stage it changes.
        for k in levels:
            a, b = get(a_res, f"{k} clients"), get(b_res, f"{k} clients")
            if a.get("median_ms") and b.get("median_ms"):
                print(
                    f"  {what}, {k} clients: median {a['median_ms']} ms vs {b['median_ms']} ms {b_name} = "
                    f"{a['median_ms'] / b['median_ms']:.2f}x; QPS {a['qps']} vs {b['qps']}; "
                    f"{stage} {a.get(stage + '_ms')} vs {b.get(stage + '_ms')} ms"
                )

    compare(
        "a lone query on every core (ENCODER_SPREAD_LONE_QUERY)",
        NO_SPREAD_LEVELS,
        new,
        no_spread,
        "without",
        "encode",
    )
    compare("two shards (MILVUS_SHARDS=2)", TWO_SHARDS_LEVELS, two_shards, new, "with one", "vector_search")
    other = next(g for g in GENERATORS if g != args.generator)
    with_other = {f"{k} clients": new.get(f"{k} clients ({other} generator)", {}) for k in GENERATOR_LEVELS}
    compare(f"the {args.generator} generator", GENERATOR_LEVELS, new, with_other, f"with {other}", "http")
    ratios = []
    for k in levels:
        b_qps = get(base, f"{k} clients").get("qps")
        if b_qps:
            ratios.append(f"{k} clients {get(new, f'{k} clients').get('qps', 0) / b_qps:.2f}x")
    print("\nnew vs baseline, QPS per level: " + ", ".join(ratios))
    levers = {name: results[name] for name in LEVERS if results.get(name)}
    if levers:
        print("\nLevers outside the targets' setup (FLAT, float32 text tower), same run:")
        for name, res in levers.items():
            one, c64 = get(res, "1 clients"), get(res, "64 clients")
            lone_ok = (one.get("median_ms") or 1e9) <= TARGETS["single_median_ms"]
            print(
                f"  {name}: 1 client median {one.get('median_ms')} ms "
                f"(<= {TARGETS['single_median_ms']:.0f}: {_met(lone_ok)}); "
                f"64 clients {c64.get('qps')} QPS, p99 {c64.get('p99_ms')} ms, {c64.get('errors')} errors, "
                f"{c64.get('shed_503')} shed"
            )


CPU_PROCESSES = ("service", "Milvus", "MariaDB", "generator")


def _print_cpu(cpu: dict) -> None:
    """Where the cores went: CPU ms per answer of each process, over each run's window."""
    rows = [
        [name, label, *(c["ms_per_answer"].get(k) for k in (*CPU_PROCESSES, "total")), c["cores_busy"]]
        for name, by_label in cpu.items()
        for label, c in by_label.items()
        if c["ms_per_answer"]
    ]
    if not rows:
        return
    print(
        "\nCPU per answer (ms of CPU of each process over the measured window / answers, any status); "
        "cores busy = their CPU seconds per second (2 cores: at most 2):"
    )
    print(table(["server", "run", *CPU_PROCESSES, "total", "cores busy"], rows))


def server_env(mv, db, collection: str) -> dict[str, str]:
    """A bench server's environment: RN50 architecture with random weights on CPU, over the
    bench's Milvus server and MariaDB, `collection` by default."""
    return {
        "MODEL_NAME": "RN50",
        "MODEL_RANDOM_INIT": "true",
        "DEVICE": "cpu",
        "MILVUS_URI": mv.uri,
        "MYSQL_URL": db.url,
        "DEFAULT_COLLECTION": collection,
        "DATA_ROOT": str(OUT / "data"),
    }


def _num(v):
    return "-" if v is None else v


# --lone-ab: the two levers for a lone search, each alone and together, against the path
# without either (the new path before them). All four servers run at once and take turns,
# one client each, so a drift of the machine (large on these shared cores) hits all alike.
LONE_AB = (
    ("neither", {**NEW_ENV, "ENCODER_SPREAD_LONE_QUERY": "false"}, ""),
    ("spread", NEW_ENV, ""),
    ("2 shards", {**NEW_ENV, "ENCODER_SPREAD_LONE_QUERY": "false"}, TWO_SHARDS_SUFFIX),
    ("spread + 2 shards", NEW_ENV, TWO_SHARDS_SUFFIX),
)


def run_lone_ab(args) -> None:
    """The --lone-ab bench (see LONE_AB)."""
    import httpx

    from bench import search_load as sl
    from bench._common import services
    from bench.gen_split import QUICK_N, QUICK_POOL, ensure_split

    n = QUICK_N if args.quick else args.n
    rounds, seconds = (2, 3.0) if args.quick else (args.rounds, args.duration)
    clients = args.ab_clients
    # One client is answered within a second of the turn's start; many queue for longer.
    warmup = 1.0 if clients == 1 or args.quick else args.warmup_s
    info = ensure_split(n, args.seed, pool_size=QUICK_POOL if args.quick else 300)
    collection = f"{COLLECTION}_flat"
    print(f"load average before start: {other_load():.2f} (2 cores); clients: {clients}", flush=True)
    t_all = time.perf_counter()
    samples: dict[str, list[dict]] = {label: [] for label, _, _ in LONE_AB}
    with services() as (db, mv):
        for suffix, env in (("", None), (TWO_SHARDS_SUFFIX, {"MILVUS_SHARDS": "2"})):
            load = load_collection(mv, db, info, "FLAT", suffix, env)
            waited = wait_until_sealed_served(mv.uri, collection + suffix, info.n)
            print(
                f"loaded {collection + suffix} ({load['seconds']:.1f} s; served sealed after {waited:.1f} s)"
            )
        base_env = server_env(mv, db, collection)
        servers = {
            label: UvicornProcess({**base_env, **env}, OUT / f"lone_ab_{i}.log", timeout=900, wait=False)
            for i, (label, env, _) in enumerate(LONE_AB)
        }
        try:
            for srv in servers.values():
                srv.wait_ready()
            queries = sl.QueryStream(endless_queries(args.seed))
            for label, _, suffix in LONE_AB:  # first passes pay lazy init
                with httpx.Client(base_url=servers[label].url, timeout=60) as c:
                    for q in ("热身", "一只猫", "两个人在街上走"):
                        c.post("/img/search", json={"query": q, "collection": collection + suffix})
            for r in range(rounds):
                order = LONE_AB if r % 2 == 0 else tuple(reversed(LONE_AB))
                for label, _, suffix in order:
                    res = sl.run_closed_loop(
                        servers[label].url,
                        label,
                        clients,
                        sl.text_search(queries, collection + suffix, args.top_k),
                        seconds,
                        warmup,
                    )
                    summary = res.summary("text")
                    samples[label].append(summary)
                    print(
                        f"   round {r + 1} {label:<18} {summary['qps']} q/s  median "
                        f"{summary['median_ms']} ms  p99 {summary['p99_ms']}  encode "
                        f"{summary.get('encode_ms')}  vector {summary.get('vector_search_ms')}  "
                        f"errors {summary['errors']}  503 {summary['shed_503']}",
                        flush=True,
                    )
        finally:
            for srv in servers.values():
                srv.close()
    rows, out = [], {}
    ref = median([s["median_ms"] for s in samples["neither"]])
    for label, _, _ in LONE_AB:
        got = samples[label]
        med = median([s["median_ms"] for s in got])
        out[label] = {
            "median_ms": round(med, 2),
            "round_medians_ms": [s["median_ms"] for s in got],
            "qps": round(median([s["qps"] for s in got]), 2),
            "p99_ms": round(median([s["p99_ms"] for s in got]), 2),
            "encode_ms": round(median([s["encode_ms"] for s in got]), 2),
            "vector_search_ms": round(median([s["vector_search_ms"] for s in got]), 2),
            "ratio_vs_neither": round(med / ref, 3),
            "errors": sum(s["errors"] for s in got),
            "shed_503": sum(s["shed_503"] for s in got),
        }
        rows.append(
            [
                label,
                out[label]["median_ms"],
                out[label]["ratio_vs_neither"],
                out[label]["qps"],
                out[label]["p99_ms"],
                out[label]["encode_ms"],
                out[label]["vector_search_ms"],
                " / ".join(str(m) for m in out[label]["round_medians_ms"]),
            ]
        )
    print(
        f"\n{clients} client{'s' if clients > 1 else ''}, {info.n:,} images x 1024-d FLAT, RN50 random "
        f"weights on CPU (ONNX); {rounds} rounds of {seconds:.0f} s per server, servers in turn; medians "
        "of the round medians, ms"
    )
    heads = ["server", "median", "vs neither", "QPS", "p99", "encode", "vector", "round medians"]
    print(table(heads, rows))
    errors, shed = (sum(o[k] for o in out.values()) for k in ("errors", "shed_503"))
    print(f"errors: {errors}, 503s: {shed}")
    print(f"total bench time {time.perf_counter() - t_all:.0f} s; load average now {other_load():.2f}")
    print(
        json.dumps(
            {"bench": "search_lone_ab", "n": info.n, "clients": clients, "machine": machine(), "results": out}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="the serving-under-load bench (issue 11)")
    ap.add_argument(
        "--lone-ab",
        action="store_true",
        help="one client: the lone-query spread and MILVUS_SHARDS=2, alone and together, servers in turn",
    )
    ap.add_argument("--rounds", type=int, default=5, help="--lone-ab: turns per server")
    ap.add_argument("--ab-clients", type=int, default=1, help="--lone-ab: concurrent clients of each turn")
    ap.add_argument(
        "--duration", type=float, default=20.0, help="--sweep: measured seconds per run (--lone-ab: per turn)"
    )
    ap.add_argument("--warmup-s", type=float, default=3.0, help="--sweep: unmeasured seconds before each run")
    ap.add_argument("--clients", default="1,4,16,64", help="--sweep: concurrency levels of the sweep")
    ap.add_argument("--shed-clients", type=int, default=256, help="--sweep: clients of the shedding run")
    ap.add_argument(
        "--generator",
        choices=GENERATORS,
        default="raw",
        help="--sweep: the clients' HTTP (raw: bench/raw_http.py, lean; httpx: httpx.AsyncClient)",
    )
    ap.add_argument(
        "--levers",
        action="store_true",
        help="--sweep: also servers with the int8 text tower, an HNSW collection and both (1, 64 clients)",
    )
    ap.add_argument(
        "--no-variants", action="store_true", help="--sweep: skip the 'no spread' and '2 shards' servers"
    )
    ap.add_argument(
        "--quick", action="store_true", help="1,000 images, 20 queries, warm-up 3, no encode check"
    )
    ap.add_argument("--n", type=int, default=31_783)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--levels", default="Adaptive", help="comma-separated MILVUS_CONSISTENCY values")
    ap.add_argument(
        "--indexes",
        default="FLAT,HNSW",
        help="comma-separated index types, one collection each (HNSW: M=16, efConstruction=200, ef=64)",
    )
    ap.add_argument(
        "--texts",
        default="fp32,int8",
        help="comma-separated text towers, one server each: fp32 (default) and/or int8 (TEXT_INT8=true)",
    )
    add_torch_threads_arg(ap, "the servers")
    ap.add_argument(
        "--no-encode-check",
        action="store_true",
        help="skip the in-process check of text encode time, padded vs trimmed tokens",
    )
    args = ap.parse_args()
    if args.sweep:
        run_sweep(args)
        return
    if args.lone_ab:
        run_lone_ab(args)
        return
    from bench.gen_split import QUICK_N, QUICK_POOL, ensure_split

    n = QUICK_N if args.quick else args.n
    n_queries = 20 if args.quick else args.queries
    warmup = 3 if args.quick else args.warmup
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    indexes = [ix.strip().upper() for ix in args.indexes.split(",") if ix.strip()]
    texts = [tx.strip().lower() for tx in args.texts.split(",") if tx.strip()]
    # Each variant is one server (consistency level, text tower) searching one collection (index).
    server_keys = [f"{lv}/{tx}" for lv in levels for tx in texts]
    variants = [f"{lv}/{ix}/{tx}" for lv in levels for ix in indexes for tx in texts]

    import httpx

    from bench._common import services

    info = ensure_split(n, args.seed, pool_size=QUICK_POOL if args.quick else 300)
    qs = queries(n_queries + warmup, args.seed)
    warm, measured = qs[:warmup], qs[warmup:]
    print(f"load average before start: {other_load():.2f} (2 cores)")
    t_all = time.perf_counter()
    lat: dict[str, list[float]] = {v: [] for v in variants}
    stages: dict[str, list[dict]] = {v: [] for v in variants}
    answers: dict[str, list[list[int]]] = {v: [] for v in variants}
    rss: dict[str, float] = {}
    with services() as (db, mv):
        for ix in indexes:
            load = load_collection(mv, db, info, ix)
            print(
                f"loaded {load['loaded']:,} images into the {ix} collection in {load['seconds']:.1f} s "
                f"({load['rate']:.0f} img/s)",
                flush=True,
            )
        for ix in indexes:
            waited = wait_until_sealed_served(mv.uri, f"{COLLECTION}_{ix.lower()}", info.n)
            print(
                f"{ix}: query nodes serve all {info.n:,} rows from sealed, indexed segments "
                f"{waited:.1f} s after the load returned",
                flush=True,
            )
        servers: dict[str, UvicornProcess] = {}
        try:
            for key in server_keys:
                lv, tx = key.split("/")
                env = {
                    **server_env(mv, db, f"{COLLECTION}_{indexes[0].lower()}"),
                    "MILVUS_CONSISTENCY": lv,
                    "TEXT_INT8": "true" if tx == "int8" else "false",
                }
                if args.torch_threads != "default":
                    env["OMP_NUM_THREADS"] = args.torch_threads
                servers[key] = UvicornProcess(env, OUT / f"search_server_{lv}_{tx}.log", wait=False)
            t = time.perf_counter()
            for key in server_keys:  # started together, so their model loads overlap
                servers[key].wait_ready()
                print(
                    f"server {key} up on {servers[key].url} after {time.perf_counter() - t:.1f} s", flush=True
                )
            clients = {key: httpx.Client(base_url=servers[key].url, timeout=60) for key in server_keys}

            def ask(variant: str, q: str) -> tuple[float, dict, list[int]]:
                lv, ix, tx = variant.split("/")
                lv = f"{lv}/{tx}"
                t = time.perf_counter()
                r = clients[lv].post(
                    "/img/search",
                    json={"query": q, "top_k": args.top_k, "collection": f"{COLLECTION}_{ix.lower()}"},
                )
                dt = (time.perf_counter() - t) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{lv}: HTTP {r.status_code}: {r.text[:500]}")
                body = r.json()
                if len(body["results"]) != args.top_k:
                    raise RuntimeError(f"{lv}: {len(body['results'])} results, expected {args.top_k}")
                return dt, body["timings_ms"], [x["id"] for x in body["results"]]

            for v in variants:
                for q in warm:
                    ask(v, q)
            block = 10
            for start in range(0, len(measured), block):
                order = variants if (start // block) % 2 == 0 else list(reversed(variants))
                for v in order:
                    for q in measured[start : start + block]:
                        dt, tm, ids = ask(v, q)
                        lat[v].append(dt)
                        stages[v].append(tm)
                        answers[v].append(ids)
            for key in server_keys:
                rss[key] = servers[key].peak_rss_kb() / 1024
            for c in clients.values():
                c.close()
        finally:
            for s in servers.values():
                s.close()

    rows, summary = [], {}
    for lv in variants:
        L = lat[lv]
        med = median(L)
        st = {
            k: median([s.get(k, 0.0) for s in stages[lv]])
            for k in ("encode", "vector_search", "image_fetch", "total")
        }
        other = median(
            [
                s["total"] - s.get("encode", 0) - s.get("vector_search", 0) - s.get("image_fetch", 0)
                for s in stages[lv]
            ]
        )
        http = median([lat - s["total"] for lat, s in zip(L, stages[lv], strict=True)])
        summary[lv] = {
            "median_ms": round(med, 2),
            "p90_ms": round(pct(L, 90), 2),
            "p99_ms": round(pct(L, 99), 2),
            "mean_ms": round(sum(L) / len(L), 2),
            "encode_ms": round(st["encode"], 2),
            "vector_search_ms": round(st["vector_search"], 2),
            "image_fetch_ms": round(st["image_fetch"], 2),
            "other_in_operation_ms": round(other, 2),
            "http_overhead_ms": round(http, 2),
            "server_total_ms": round(st["total"], 2),
            "server_peak_rss_mb": round(rss.get(f"{lv.split('/')[0]}/{lv.split('/')[2]}", 0), 0),
            "queries": len(L),
        }
        rows.append(
            [
                f"MILVUS_CONSISTENCY={lv.split('/')[0]}, {lv.split('/')[1]}, text {lv.split('/')[2]}",
                len(L),
                med,
                pct(L, 90),
                pct(L, 99),
                st["encode"],
                st["vector_search"],
                st["image_fetch"],
                other,
                http,
            ]
        )
    print()
    print(
        f"POST /img/search, {info.n:,} images (Milvus 2.3 server + MariaDB), RN50 random weights on CPU "
        f"(torch threads: {args.torch_threads}), "
        f"top_k={args.top_k}, {n_queries} queries each after {warmup} warm-up; milliseconds"
    )
    print(
        table(
            [
                "server",
                "queries",
                "median",
                "p90",
                "p99",
                "encode",
                "vector_search",
                "image_fetch",
                "other in op",
                "HTTP overhead",
            ],
            rows,
        )
    )
    print("(stage columns are medians of each stage; shares of the median latency:)")
    for lv in variants:
        s = summary[lv]
        parts = {
            k: s[k + "_ms"] / s["median_ms"]
            for k in ("encode", "vector_search", "image_fetch", "other_in_operation", "http_overhead")
        }
        print(f"  {lv:<20} " + "  ".join(f"{k} {v:.0%}" for k, v in parts.items()))
        summary[lv]["shares"] = {k: round(v, 3) for k, v in parts.items()}
    for lv in levels:
        for ix, tx in ((ix, tx) for ix in indexes for tx in texts):
            v, exact = f"{lv}/{ix}/{tx}", f"{lv}/FLAT/{tx}"
            if tx != "fp32" and f"{lv}/{ix}/fp32" in answers:
                # The int8 text tower: how many of the float32 tower's top-k it returned.
                ref = answers[f"{lv}/{ix}/fp32"]
                same = [len(set(a) & set(b)) / len(b) for a, b in zip(answers[v], ref, strict=True)]
                summary[v]["top_k_overlap_vs_fp32_text"] = round(sum(same) / len(same), 4)
                print(
                    f"  {v}: top-{args.top_k} overlap with the fp32 text tower on the same queries "
                    f"{summary[v]['top_k_overlap_vs_fp32_text']:.3f}"
                )
            if ix != "FLAT" and exact in answers:
                # Approximate search: how many of the exact top-k it returned, on the same queries.
                overlap = [
                    len(set(a) & set(b)) / len(b) for a, b in zip(answers[v], answers[exact], strict=True)
                ]
                summary[v]["recall_vs_flat"] = round(sum(overlap) / len(overlap), 4)
                print(
                    f"  {v}: recall@{args.top_k} against {exact} on the same queries "
                    f"{summary[v]['recall_vs_flat']:.3f}"
                )
    for v in variants:
        print(
            f"target median < 50 ms, {v}: {'met' if summary[v]['median_ms'] < 50 else 'NOT met'} "
            f"({summary[v]['median_ms']:.1f} ms)"
        )
    enc = None
    if not (args.no_encode_check or args.quick):
        enc = encode_check(measured[:50])
        print(
            f"text encode in-process (RN50 text tower, {enc['torch_threads']} torch threads), "
            "median: padded to 52 "
            f"tokens {enc['padded_ms']:.1f} ms, padding trimmed {enc['trimmed_ms']:.1f} ms "
            f"({enc['speedup']:.2f}x; max |diff| {enc['max_abs_diff']:.1e})"
        )
    print(f"total bench time {time.perf_counter() - t_all:.0f} s; load average now {other_load():.2f}")
    print(
        json.dumps(
            {
                "bench": "search",
                "n": info.n,
                "quick": args.quick,
                "machine": machine(),
                "load_rate": round(load["rate"], 1),
                "torch_threads": args.torch_threads,
                "variants": summary,
                "encode_check": enc,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
