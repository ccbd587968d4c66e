"""The host's transparent huge pages: what they change for a search (issue 11), in one run.

    python -m bench.bench_thp [--rounds 2] [--duration 20] [--clients 1,64] [--quick]

Needs root: it writes /sys/kernel/mm/transparent_hugepage/enabled, and puts the host's own
setting back at the end (also after an error or Ctrl-C).

Why: Milvus 2.3 keeps a sealed segment's vectors in an anonymous mapping of its own, not from
its allocator, which the kernel backs with 2 MiB pages only when the host's THP mode is
`always`; under `madvise` (the default of Debian and Ubuntu; RHEL's is `always`) they stay in
4 KiB pages, and every FLAT search streams the whole segment (130 MB for 31,783 x 1024-d)
through the TLB. In a virtual machine each TLB miss walks two page tables.

How: the 31,783-image split in a FLAT collection on the Milvus 2.3 server + MariaDB, RN50
architecture with random weights on CPU, the new path's defaults (as `bench_search --sweep`'s
"new" server). The two modes take turns (madvise, always, always, madvise, ...: each mode as
often first as second); each turn writes the mode, releases the collection and loads it again
(so Milvus allocates the segment under that mode), starts a fresh server (its own memory too),
waits for Milvus to be idle, and runs each client level for --duration seconds after 3 s of
warm-up (closed-loop keep-alive clients, distinct queries: bench/search_load.py). Per mode it
prints the medians over its turns: QPS, median and p99 latency, the vector stage, CPU a search
of the service and of Milvus, and the huge pages the Milvus process held (AnonHugePages from
/proc, which shows the mode took); then always / madvise ratios. `--quick`: 1,000 images, one
round, 3 s a level.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from statistics import median

from bench._common import (
    THP_ENABLED,
    UvicornProcess,
    machine,
    other_load,
    table,
    thp_mode,
    tree_cpu_s,
    wait_quiet,
)
from bench.bench_search import (
    COLLECTION,
    NEW_ENV,
    OUT,
    QUIET_CORES,
    endless_queries,
    load_collection,
    server_env,
    wait_until_sealed_served,
)

MODES = ("madvise", "always")


@contextmanager
def host_mode_restored(path: Path = THP_ENABLED):
    """Yield a setter of the host's THP mode; the mode found at the start is written back after."""
    original = thp_mode(path)
    if original is None:
        raise RuntimeError(f"{path} cannot be read")

    def set_mode(mode: str) -> None:
        path.write_text(mode)
        if thp_mode(path) != mode:
            raise RuntimeError(f"{path} reads {thp_mode(path)!r} after writing {mode!r}")

    try:
        yield set_mode
    finally:
        set_mode(original)


def anon_huge_mb(pid: int) -> float:
    """MiB of anonymous memory the process holds in transparent huge pages."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) / 1024
    return 0.0


def turn_order(rounds: int) -> list[str]:
    """madvise, always, always, madvise, ...: each mode as often first as second in a round."""
    return [m for r in range(rounds) for m in (MODES if r % 2 == 0 else MODES[::-1])]


def reload_collection(uri: str, name: str, n: int) -> None:
    """Release the collection and load it again: Milvus allocates its segments anew."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, timeout=600)
    try:
        client.release_collection(name)
        client.load_collection(name)
    finally:
        client.close()
    wait_until_sealed_served(uri, name, n)


def run(args) -> None:
    import httpx

    from bench import search_load as sl
    from bench._common import services
    from bench.gen_split import QUICK_N, QUICK_POOL, ensure_split

    if thp_mode() is None:
        raise SystemExit(f"{THP_ENABLED} cannot be read: this kernel has no transparent huge pages")
    if not os.access(THP_ENABLED, os.W_OK):
        raise SystemExit(f"{THP_ENABLED} is not writable: run the bench as root")
    n = QUICK_N if args.quick else args.n
    rounds, duration, warmup = (1, 3.0, 1.0) if args.quick else (args.rounds, args.duration, 3.0)
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    info = ensure_split(n, args.seed, pool_size=QUICK_POOL if args.quick else 300)
    collection = f"{COLLECTION}_flat"
    print(
        f"load average before start: {other_load():.2f} (2 cores); the host's THP mode: {thp_mode()}",
        flush=True,
    )
    t_all = time.perf_counter()
    runs: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in levels} for m in MODES}
    with host_mode_restored() as set_mode, services() as (db, mv):
        load = load_collection(mv, db, info, "FLAT")
        print(f"loaded {load['loaded']:,} images into {collection} in {load['seconds']:.1f} s", flush=True)
        wait_until_sealed_served(mv.uri, collection, info.n)
        env = {**server_env(mv, db, collection), **NEW_ENV}
        queries = sl.QueryStream(endless_queries(args.seed))
        for turn, mode in enumerate(turn_order(rounds), 1):
            set_mode(mode)
            reload_collection(mv.uri, collection, info.n)
            waited, _ = wait_quiet(mv.pid, QUIET_CORES)
            huge = anon_huge_mb(mv.pid)
            print(
                f"\n== turn {turn}: THP {mode}; collection loaded again; Milvus quiet after {waited:.0f} s; "
                f"Milvus holds {huge:.0f} MiB in huge pages",
                flush=True,
            )
            with (
                UvicornProcess(env, OUT / f"thp_server_{turn}.log", timeout=900) as srv,
                httpx.Client(base_url=srv.url, timeout=60) as c,
            ):
                for q in ("热身", "一只猫", "两个人在街上走"):  # first passes pay lazy init
                    c.post("/img/search", json={"query": q, "collection": collection})

                def cpu_now(srv=srv) -> dict:
                    return {"service": tree_cpu_s(srv.proc.pid), "Milvus": tree_cpu_s(mv.pid)}

                for clients in levels:
                    res = sl.run_closed_loop(
                        srv.url,
                        "text",
                        clients,
                        sl.text_search(queries, collection, args.top_k),
                        duration,
                        warmup,
                        None,
                        cpu_now,
                    )
                    s = res.summary("text")
                    cpu = res.cpu_ms_per_answer()
                    row = {
                        "qps": s["qps"],
                        "median_ms": s["median_ms"],
                        "p99_ms": s["p99_ms"],
                        "vector_ms": s.get("vector_search_ms"),
                        "service_cpu_ms": cpu.get("service"),
                        "milvus_cpu_ms": cpu.get("Milvus"),
                        "milvus_huge_mib": round(huge),
                        "errors": s["errors"],
                        "shed": s["shed_503"],
                    }
                    runs[mode][clients].append(row)
                    print(
                        f"   {clients:>3} clients  {row['qps']:6.1f} q/s  median {row['median_ms']} ms  "
                        f"p99 {row['p99_ms']} ms  vector {row['vector_ms']} ms  CPU a search: service "
                        f"{row['service_cpu_ms']} ms, Milvus {row['milvus_cpu_ms']} ms  errors "
                        f"{row['errors']}  503 {row['shed']}",
                        flush=True,
                    )
    print_summary(runs, levels, rounds, duration, info.n)
    print(
        f"total bench time {time.perf_counter() - t_all:.0f} s; load average now {other_load():.2f}; "
        f"the host's THP mode again: {thp_mode()}"
    )
    print(json.dumps({"bench": "thp", "n": info.n, "machine": machine(), "runs": runs}))


FIELDS = ("qps", "median_ms", "p99_ms", "vector_ms", "service_cpu_ms", "milvus_cpu_ms", "milvus_huge_mib")


def medians(rows: list[dict]) -> dict:
    return {f: round(median(r[f] for r in rows), 2) for f in FIELDS if all(r[f] is not None for r in rows)}


def print_summary(runs: dict, levels: list[int], rounds: int, duration: float, n: int) -> None:
    print(
        f"\nPOST /img/search, {n:,} images x 1024-d FLAT, Milvus 2.3 server + MariaDB, RN50 random weights "
        f"(the new path's defaults); medians over {rounds} turns per mode of {duration:.0f} s per level; ms"
    )
    rows = []
    for clients in levels:
        per_mode = {m: medians(runs[m][clients]) for m in MODES}
        for m in MODES:
            got = per_mode[m]
            rows.append([clients, m, *(got.get(f, "-") for f in FIELDS)])
        base, new = per_mode["madvise"], per_mode["always"]
        rows.append(
            [
                clients,
                "always / madvise",
                *(
                    round(new[f] / base[f], 3) if f in new and f in base and base[f] else "-"
                    for f in FIELDS[:-1]
                ),
                "",
            ]
        )
    headers = [
        "clients",
        "THP",
        "QPS",
        "median",
        "p99",
        "vector",
        "service CPU",
        "Milvus CPU",
        "Milvus huge MiB",
    ]
    print(table(headers, rows))
    errors = sum(r["errors"] + r["shed"] for m in MODES for c in levels for r in runs[m][c])
    print(f"errors and 503s over every run: {errors}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each runs both modes")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per client level")
    ap.add_argument("--clients", default="1,64", help="client levels per turn")
    ap.add_argument("--quick", action="store_true", help="1,000 images, one round, 3 s a level")
    ap.add_argument("--n", type=int, default=31_783)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=10)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
