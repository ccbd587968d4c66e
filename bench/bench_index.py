"""Index types on the Milvus 2.3 server: build time, memory, recall@10, vector-stage latency.

    python -m bench.bench_index [--n 100000] [--queries 200] [--quick] [--uniform]
                                [--indexes FLAT,IVF_FLAT,HNSW,IVF_SQ8,IVF_PQ] [--query-kind text|image]
                                [--ef 16,32,64,128,256] [--nprobe 4,8,16,32,64,128] [--hnsw-m 16,32]
                                [--hnsw-efc 200,400] [--recall-only]
                                [--milvus-config dataCoord.segment.maxSize=4096 ...]

N realistic features (bench/realistic_features.py: narrow cone, clusters, near-duplicates;
`--uniform` for uniform random unit vectors, the worst case) go into one collection of the
Milvus 2.3 server (scripts.dev_services.milvus_server) once; each index type is then built in
turn on that collection the way the 2.3 server allows it (release, drop the index, create the
new one and wait for it, load). For each:

- build: seconds from create_index to the index built (waited for), then load seconds;
- memory: the server's resident memory (the standalone server holds the query node) after the
  load, and its change against the released collection before it (a rough figure: freed memory
  is not always returned to the system, so read the column as "at most");
- for each search parameter of a sweep (HNSW ef, IVF nprobe): recall@10 of the index's top 10
  against the exact top 10 of the same vectors (`operations.evaluation.knn.exact_topk`, compared
  with `operations.evaluation.crosscheck`: mean overlap@10), and the vector-stage median and p90
  (one query per search call, as the service's single searches, Bounded consistency).

Queries are text-like (`FeatureModel.queries`: the modality gap) unless `--query-kind image`.
Prints a table and a JSON line. `--quick`: 5,000 vectors, 50 queries, a short sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid

import numpy as np

from bench._common import machine, median, other_load, pct, table, tree_rss_mb
from operations.domain import AUTO_HNSW_BUILD

DIM = 1024
MAX_ROWS_PER_INSERT = 3000  # ~12 MB a message, under Milvus' 64 MB limit

INDEXES = ("FLAT", "IVF_FLAT", "HNSW", "IVF_SQ8", "IVF_PQ")
# The standing HNSW build, the AUTO index's; --hnsw-m / --hnsw-efc build others beside it.
HNSW_M, HNSW_EFC = int(AUTO_HNSW_BUILD["M"]), int(AUTO_HNSW_BUILD["efConstruction"])


def build_params(kind: str, n: int, hnsw_m: int = HNSW_M, hnsw_efc: int = HNSW_EFC) -> dict:
    """Build parameters: HNSW M 16 / efConstruction 200 unless told; IVF nlist ~ 4 sqrt(n), a
    power of two."""
    nlist = max(16, min(65536, 2 ** round(math.log2(4 * math.sqrt(n)))))
    return {
        "FLAT": {},
        "HNSW": {"M": hnsw_m, "efConstruction": hnsw_efc},
        "IVF_FLAT": {"nlist": nlist},
        "IVF_SQ8": {"nlist": nlist},
        "IVF_PQ": {"nlist": nlist, "m": 64, "nbits": 8},  # 16 dims per sub-quantizer
    }[kind]


def hnsw_label(m: int, efc: int) -> str:
    """The standing build is "HNSW"; another is named by what differs ("HNSW M32 efC400")."""
    return "HNSW" + (f" M{m}" if m != HNSW_M else "") + (f" efC{efc}" if efc != HNSW_EFC else "")


def build_plan(
    kinds: list[str], n: int, hnsw_m: list[int], hnsw_efc: list[int]
) -> list[tuple[str, str, dict]]:
    """(label, index type, build params) of each build, in order: HNSW once per (M, efConstruction)."""
    return [
        (hnsw_label(m, efc) if k == "HNSW" else k, k, build_params(k, n, m, efc))
        for k in kinds
        for m in (hnsw_m if k == "HNSW" else [HNSW_M])
        for efc in (hnsw_efc if k == "HNSW" else [HNSW_EFC])
    ]


def sweep(kind: str, quick: bool, ef: list[int] | None = None, nprobe: list[int] | None = None) -> list[dict]:
    """Search parameters to measure; `ef` / `nprobe` replace the default lists (a larger
    collection may need a wider HNSW beam or more IVF lists probed for the same recall)."""
    if kind == "FLAT":
        return [{}]
    if kind == "HNSW":
        return [{"ef": e} for e in (ef or ((16, 64, 128) if quick else (16, 32, 64, 128, 256)))]
    return [{"nprobe": p} for p in (nprobe or ((4, 16, 64) if quick else (4, 8, 16, 32, 64, 128)))]


def wait_segments_stable(client, name: str, quiet_s: float, timeout_s: float, index: str) -> float | None:
    """Seconds until the query node's set of segments has not changed, and no row has waited
    for an index, for `quiet_s` (None past `timeout_s`). "Nothing pending" once is not enough: a
    merged segment's index can be built while the query node still serves the segments it
    replaces (seen at 1,000,000: 4 segments served while a further merge was already indexed);
    and unchanged segments are not either: a later merge can start indexing after them (seen
    at 1,000,000 with IVF_FLAT: 1,000,000 rows pending again while the bench searched)."""
    if quiet_s <= 0:
        return 0.0
    t0 = time.perf_counter()
    last: set[int] | None = None
    since = t0
    while time.perf_counter() - t0 < timeout_s:
        served = client._get_connection().get_query_segment_info(name, timeout=60)
        ids = {int(seg.segmentID) for seg in served}
        pending = int(client.describe_index(name, index).get("pending_index_rows", 0))
        now = time.perf_counter()
        if ids != last or pending:
            last, since = ids, now
        elif now - since >= quiet_s:
            return round(now - t0, 1)
        time.sleep(5)
    return None


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def new_collection(client, prefix: str) -> str:
    """A new collection of (id, 1024-d vector) on the server, named `prefix`_<random>."""
    from pymilvus import DataType, MilvusClient

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    client.create_collection(name, schema=schema, timeout=600)
    return name


def insert_all(client, name: str, data: np.ndarray) -> float:
    t = time.perf_counter()
    for start in range(0, len(data), MAX_ROWS_PER_INSERT):
        block = np.asarray(data[start : start + MAX_ROWS_PER_INSERT], np.float32)
        rows = [{"id": start + i, "vector": v} for i, v in enumerate(block.tolist())]
        client.insert(name, rows, timeout=600)
    client.flush(name, timeout=600)
    return time.perf_counter() - t


def recall_at_10(exact, got: list[list[int]]) -> float:
    from operations.evaluation.crosscheck import crosscheck

    a = {int(q): list(map(int, ids)) for q, ids, _ in exact.items()}
    b = {i: ids for i, ids in enumerate(got)}
    return float(crosscheck(a, b)["mean_overlap@10"])


def measure(client, name: str, kind: str, params: dict, queries: np.ndarray, exact) -> dict:
    times: list[float] = []
    got: list[list[int]] = []
    sp = {"metric_type": "IP", "params": params}
    qs = queries.tolist()
    client.search(name, data=[qs[0]], limit=10, search_params=sp, consistency_level="Bounded", timeout=600)
    for q in qs:
        t = time.perf_counter()
        res = client.search(
            name, data=[q], limit=10, search_params=sp, consistency_level="Bounded", timeout=600
        )
        times.append((time.perf_counter() - t) * 1000)
        got.append([int(h["id"]) for h in res[0]])
    return {
        "index": kind,
        "params": params,
        "recall@10": round(recall_at_10(exact, got), 4),
        "median_ms": round(median(times), 2),
        "p90_ms": round(pct(times, 90), 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="5,000 vectors, 50 queries, a short sweep")
    ap.add_argument("--uniform", action="store_true", help="uniform random unit vectors (the worst case)")
    ap.add_argument("--query-kind", choices=("text", "image"), default="text")
    ap.add_argument("--indexes", default=",".join(INDEXES))
    ap.add_argument("--ef", type=int_list, default=None, help="HNSW ef values, e.g. 64,128,256,512")
    ap.add_argument("--nprobe", type=int_list, default=None, help="IVF nprobe values, e.g. 16,64,128")
    ap.add_argument(
        "--hnsw-m",
        type=int_list,
        default=[HNSW_M],
        help="HNSW M values, one build each, e.g. 16,32 (more links: more recall per ef, longer build)",
    )
    ap.add_argument(
        "--hnsw-efc",
        type=int_list,
        default=[HNSW_EFC],
        help="HNSW efConstruction values, one build each with every M (a wider build beam: a better graph)",
    )
    ap.add_argument(
        "--stable-s",
        type=float,
        default=120.0,
        help="after indexing settles, wait until segments stay unchanged and none pending this long (0: no)",
    )
    ap.add_argument(
        "--recall-only",
        action="store_true",
        help="search once the index is built, without waiting for compaction's merges to be indexed "
        "again: recall only (the server is still indexing, so no latency is reported)",
    )
    ap.add_argument(
        "--milvus-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a milvus.yaml setting of the test server, e.g. dataCoord.segment.maxSize=4096 (repeatable)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries = min(args.n, 5000), min(args.queries, 50)
        args.stable_s = min(args.stable_s, 10.0)
    kinds = [k.strip().upper() for k in args.indexes.split(",") if k.strip()]
    for k in kinds:
        if k not in INDEXES:
            ap.error(f"unknown index {k}; one of {INDEXES}")
    plan = build_plan(kinds, args.n, args.hnsw_m, args.hnsw_efc)

    from pymilvus import MilvusClient

    from bench.bench_scale import wait_indexed
    from bench.realistic_features import FeatureModel, cached
    from operations.evaluation.knn import exact_topk
    from scripts.dev_services import milvus_server

    load_before = other_load()
    print(f"load average before start: {load_before:.2f} (2 cores)")
    t_all = time.perf_counter()
    model = FeatureModel(args.n, args.seed)
    if args.uniform:
        rng = np.random.default_rng(args.seed)
        data = rng.standard_normal((args.n, DIM), dtype=np.float32)
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        queries = rng.standard_normal((args.queries, DIM), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    else:
        data = cached(args.n, args.seed)
        queries = (
            model.queries(args.queries) if args.query_kind == "text" else model.image_queries(args.queries)
        )
    t = time.perf_counter()
    exact = exact_topk(queries, data, np.arange(args.n, dtype=np.int64), 10)
    exact_s = time.perf_counter() - t
    print(
        f"{args.n:,} x {DIM}-d {'uniform' if args.uniform else 'realistic'} features, "
        f"{args.queries} {args.query_kind} queries; exact top 10 in {exact_s:.1f} s"
    )

    rows: list[dict] = []
    builds: list[dict] = []
    milvus_config = dict(item.split("=", 1) for item in args.milvus_config)
    if milvus_config:
        print(f"Milvus settings: {milvus_config}")
    with milvus_server(config=milvus_config) as mv:
        client = MilvusClient(uri=mv.uri, timeout=600)
        name = new_collection(client, "bench_index")
        try:
            insert_s = insert_all(client, name, data)
            print(f"inserted and flushed {args.n:,} vectors in {insert_s:.1f} s")
            for label, kind, bparams in plan:
                client.release_collection(name, timeout=600)
                for idx in client.list_indexes(name, timeout=600):
                    client.drop_index(name, idx, timeout=600)
                rss_before = tree_rss_mb(mv.pid)
                params = client.prepare_index_params()
                params.add_index(field_name="vector", index_type=kind, metric_type="IP", params=bparams)
                t = time.perf_counter()
                client.create_index(name, params, timeout=3600, sync=True)
                build_s = time.perf_counter() - t
                t = time.perf_counter()
                client.load_collection(name, timeout=3600)
                load_s = time.perf_counter() - t
                # The 2.3 server compacts small sealed segments into larger ones after a flush and
                # builds their indexes again: measured once that has settled, as users meet it.
                (index_name,) = client.list_indexes(name, timeout=600)
                if args.recall_only:
                    settle, stable_s = {"settled_s": None}, None
                else:
                    settle = wait_indexed(mv.uri, name, args.n, 3600, index_name)
                    stable_s = wait_segments_stable(client, name, args.stable_s, 3600, index_name)
                time.sleep(1.0)
                rss_after = tree_rss_mb(mv.pid)
                # A search runs every sealed segment's index and merges: their number is part of its cost.
                segments = client._get_connection().get_query_segment_info(name, timeout=60)
                builds.append(
                    {
                        "index": label,
                        "build_params": bparams,
                        "build_s": round(build_s, 1),
                        "load_s": round(load_s, 1),
                        "settled_after_load_s": settle["settled_s"],
                        "segments_stable_after_s": stable_s,
                        "segments": len(segments),
                        "segment_rows": sorted(int(seg.num_rows) for seg in segments),
                        "server_rss_mb": round(rss_after),
                        "rss_delta_mb": round(rss_after - rss_before),
                    }
                )
                # Each build as it ends: a long run stopped part-way keeps what it measured.
                print(f"  {label} built: {json.dumps(builds[-1])}", flush=True)
                for sp in sweep(kind, args.quick, args.ef, args.nprobe):
                    r = measure(client, name, label, sp, queries, exact)
                    if args.recall_only:  # timed while the server indexes merges: not a latency
                        r["median_ms"] = r["p90_ms"] = None
                    rows.append(r)
                    line = f"  {label} {sp}: recall@10 {r['recall@10']:.4f}, median {r['median_ms']} ms"
                    print(line, flush=True)
        finally:
            client.drop_collection(name, timeout=600)
            client.close()

    print(f"\nMilvus 2.3 server, {args.n:,} x {DIM}-d, build and load (one index at a time):")
    print(
        table(
            [
                "index",
                "build params",
                "segments",
                "build s",
                "load s",
                "settled s",
                "segments stable s",
                "server RSS MB",
                "RSS change MB",
            ],
            [
                [
                    b["index"],
                    json.dumps(b["build_params"]),
                    b["segments"],
                    b["build_s"],
                    b["load_s"],
                    b["settled_after_load_s"],
                    b["segments_stable_after_s"],
                    b["server_rss_mb"],
                    b["rss_delta_mb"],
                ]
                for b in builds
            ],
        )
    )
    print(f"\nsearch, top 10, {args.queries} {args.query_kind} queries, one per call:")
    print(
        table(
            ["index", "search params", "recall@10", "median ms", "p90 ms"],
            [
                [r["index"], json.dumps(r["params"]), f"{r['recall@10']:.3f}", r["median_ms"], r["p90_ms"]]
                for r in rows
            ],
        )
    )
    load_after = other_load()
    print(
        f"\ntotal {time.perf_counter() - t_all:.0f} s; "
        f"load average before {load_before:.2f}, now {load_after:.2f}"
    )
    print(
        json.dumps(
            {
                "bench": "index",
                "n": args.n,
                "queries": args.queries,
                "query_kind": args.query_kind,
                "features": "uniform" if args.uniform else "realistic",
                "seed": args.seed,
                "quick": args.quick,
                "recall_only": args.recall_only,
                "milvus_config": milvus_config,
                "builds": builds,
                "search": rows,
                "machine": machine(),
                "load_before": load_before,
                "load_after": load_after,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
