"""Filtered vector search at 100,000 vectors: cost of a filter against no filter.

    python -m bench.bench_filter [--quick] [--n 100000] [--queries 100] [--lite-queries 10] [--no-lite]

Through `MilvusVectorStore.search` (our store: the filter expression comes
from `milvus_filter.build_filter`), top-10, on the Milvus 2.3 server
(scripts.dev_services.milvus_server), collection FLAT, 1024-d random unit vectors.
Each vector has a source (one of 10), 0-3 tags (of 20) and a created_at in
2024. Filters, measured in the same run, query by query in rotating order:

- none:          no filter
- source+time:   source in 3 of the 10 sources and created_at within 6 months (~15% match)
- tags:          array_contains_any(tags, 2 of the 20 tags)                      (~14% match)
- narrow:        source in 1 source and created_at within 1 month               (~0.8% match)

Every result is checked against the filter, and a few queries against an
exact numpy top-10 over the matching rows (FLAT must be exact). Reported for
the store's default consistency (Strong) and for Session (which skips the
wait for the server's time tick and so shows the filter's own cost).

Then (unless --no-lite) the same on Milvus Lite (a file, in-process), known
to be slow at this size; fewer queries there. Lite evaluates the tags filter
row by row, so the service resolves tags in the SQL image store on Lite
(`operations.vector_filter`); that path is measured too, in the same run,
against Lite's own array filter.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from bench._common import machine, median, other_load, pct, table

REPO = Path(__file__).resolve().parent.parent

OUT = REPO / "bench" / "out"
DIM = 1024
SOURCES = [f"相册{i}" if i % 2 else f"camera_{i}" for i in range(10)]
TAGS = [f"tag{i:02d}" for i in range(20)]
T0 = 1_704_067_200  # 2024-01-01 UTC
YEAR = 366 * 86400
MONTH = 30 * 86400


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sources = rng.integers(0, len(SOURCES), n)
    n_tags = rng.integers(0, 4, n)
    tags = [tuple(TAGS[j] for j in sorted(rng.choice(len(TAGS), k, replace=False))) for k in n_tags]
    created = T0 + rng.integers(0, YEAR, n)
    return vectors, sources, tags, created


def filters():
    from operations.domain import SearchFilter

    return {
        "none": None,
        "source+time": SearchFilter(
            sources=tuple(SOURCES[:3]), created_from=T0 + 2 * MONTH, created_to=T0 + 8 * MONTH
        ),
        "tags": SearchFilter(tags=(TAGS[3], TAGS[11])),
        "narrow": SearchFilter(sources=(SOURCES[5],), created_from=T0 + 4 * MONTH, created_to=T0 + 5 * MONTH),
    }


def mask_for(flt, sources, tags, created) -> np.ndarray:
    if flt is None:
        return np.ones(len(sources), bool)
    m = np.ones(len(sources), bool)
    if flt.sources:
        m &= np.isin(sources, [SOURCES.index(s) for s in flt.sources])
    if flt.created_from is not None:
        m &= created >= flt.created_from
    if flt.created_to is not None:
        m &= created <= flt.created_to
    if flt.tags:
        want = set(flt.tags)
        m &= np.array([bool(want & set(t)) for t in tags])
    return m


def fill(store, name: str, ids: np.ndarray, vectors, sources, tags, created, chunk: int = 10_000) -> float:
    from operations.domain import IndexSpec, VectorAttrs

    store.create_collection(name, DIM, "RN50", IndexSpec("FLAT"))
    t = time.perf_counter()
    for start in range(0, len(ids), chunk):
        sl = slice(start, start + chunk)
        attrs = [VectorAttrs(SOURCES[s], t_, int(c)) for s, t_, c in zip(sources[sl], tags[sl], created[sl])]
        store.upsert(name, ids[sl].tolist(), vectors[sl], attrs)
    return time.perf_counter() - t


def measure(store, name: str, queries: np.ndarray, data, label: str, exact_checks: int = 3) -> dict:
    vectors, sources, tags, created = data
    fl = filters()
    masks = {k: mask_for(f, sources, tags, created) for k, f in fl.items()}
    kinds = list(fl)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for k in kinds:  # warm-up: first search of each expression
        store.search(name, queries[0], 10, fl[k])
    for qi, q in enumerate(queries):
        order = kinds[qi % len(kinds) :] + kinds[: qi % len(kinds)]
        for k in order:
            t = time.perf_counter()
            hits = store.search(name, q, 10, fl[k])[0]
            times[k].append((time.perf_counter() - t) * 1000)
            idx = np.array([h.id for h in hits]) - 1
            if len(hits) != 10 or not masks[k][idx].all():
                raise RuntimeError(
                    f"{label} {k}: {len(hits)} hits, filter violated: {not masks[k][idx].all()}"
                )
            if qi < exact_checks:
                cand = np.flatnonzero(masks[k])
                scores = vectors[cand] @ q
                want = set((cand[np.argsort(-scores)[:10]] + 1).tolist())
                got = {h.id for h in hits}
                if len(want & got) < 9:  # float ties at the 10th place may differ
                    raise RuntimeError(
                        f"{label} {k}: results differ from exact top-10 ({len(want & got)}/10)"
                    )
    out = {}
    for k in kinds:
        out[k] = {
            "median_ms": round(median(times[k]), 2),
            "p90_ms": round(pct(times[k], 90), 2),
            "match_share": round(float(masks[k].mean()), 4),
            "queries": len(times[k]),
        }
    base = out["none"]["median_ms"]
    for k in kinds:
        out[k]["ratio_vs_none"] = round(out[k]["median_ms"] / base, 3)
    return out


def tags_via_sql(lite, base: Path, ids: np.ndarray, data, queries: np.ndarray, lite_res: dict) -> dict:
    """What the service does on Lite (operations.vector_filter): the tags filter
    resolved in the SQL image store (SQLite, same metadata) and searched as an
    id list. Timed per query: the SQL lookup plus the search."""
    from types import SimpleNamespace

    from operations.domain import ImageRow
    from operations.stores.sql_image_store import SqlImageStore
    from operations.stores.sql_pool import SqlPool
    from operations.vector_filter import filter_for_vectors

    vectors, sources, tags, created = data
    images = SqlImageStore(SqlPool("", base / "images.sqlite3", 600, 2))
    images.ensure_collection("bench_filter")
    for start in range(0, len(ids), 10_000):
        images.insert_rows(
            "bench_filter",
            [
                ImageRow(
                    id=int(i),
                    sha256=f"{int(i):064x}",
                    image_b64="AA==",
                    source=SOURCES[s],
                    tags=t,
                    created_at=int(c),
                )
                for i, s, t, c in zip(
                    ids[start : start + 10_000],
                    sources[start : start + 10_000],
                    tags[start : start + 10_000],
                    created[start : start + 10_000],
                )
            ],
        )
    svc = SimpleNamespace(vectors=lite, images=images)
    flt = filters()["tags"]
    mask = mask_for(flt, sources, tags, created)
    times = []
    for qi, q in enumerate(queries):
        t = time.perf_counter()
        routed, nothing = filter_for_vectors(svc, "bench_filter", flt)
        hits = [] if nothing else lite.search("bench_filter", q, 10, routed)[0]
        times.append((time.perf_counter() - t) * 1000)
        idx = np.array([h.id for h in hits]) - 1
        if len(hits) != 10 or not mask[idx].all() or routed.only_ids is None:
            raise RuntimeError("tags via SQL: wrong hits or not routed")
        if qi == 0:
            cand = np.flatnonzero(mask)
            want = set((cand[np.argsort(-(vectors[cand] @ q))[:10]] + 1).tolist())
            if len(want & {h.id for h in hits}) < 9:
                raise RuntimeError("tags via SQL: results differ from the exact top-10")
    images.close()
    out = {
        "median_ms": round(median(times), 2),
        "p90_ms": round(pct(times, 90), 2),
        "queries": len(times),
        "ids_listed": len(routed.only_ids),
        "ratio_vs_array_filter": round(median(times) / lite_res["tags"]["median_ms"], 4),
        "ratio_vs_none": round(median(times) / lite_res["none"]["median_ms"], 3),
    }
    print(
        f"Lite, tags resolved in SQL (what the service does): median {out['median_ms']} ms, p90 {out['p90_ms']} "
        f"({out['ids_listed']:,} ids listed): {out['ratio_vs_array_filter']:.3f}x the array filter's "
        f"{lite_res['tags']['median_ms']} ms, {out['ratio_vs_none']:.2f}x no filter"
    )
    return out


def print_table(title: str, res: dict) -> None:
    print(title)
    print(
        table(
            ["filter", "matches", "queries", "median ms", "p90 ms", "vs no filter"],
            [
                [
                    k,
                    f"{v['match_share']:.1%}",
                    v["queries"],
                    v["median_ms"],
                    v["p90_ms"],
                    f"{v['ratio_vs_none']:.2f}x",
                ]
                for k, v in res.items()
            ],
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5,000 vectors, 10 queries, Lite with 2,000")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument(
        "--lite-queries", type=int, default=10, help="Lite is slow: a tags filter takes ~10 s a query at 100k"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-lite", action="store_true", help="skip the Milvus Lite run")
    args = ap.parse_args()
    n = 5_000 if args.quick else args.n
    nq = 10 if args.quick else args.queries
    lite_q = 5 if args.quick else args.lite_queries

    from bench._common import services
    from operations.stores.milvus_store import MilvusVectorStore

    print(f"load average before start: {other_load():.2f} (2 cores)")
    t_all = time.perf_counter()
    data = make_data(n, args.seed)
    ids = np.arange(1, n + 1)
    queries = make_data(max(nq, lite_q), args.seed + 1)[0]
    report: dict = {}
    with services(mariadb=False) as (_, mv):
        strong = MilvusVectorStore(mv.uri, timeout_s=120, consistency="Strong")
        session = MilvusVectorStore(mv.uri, timeout_s=120, consistency="Session")
        name = "bench_filter"
        secs = fill(strong, name, ids, *data)
        print(
            f"server: upserted {n:,} vectors through MilvusVectorStore.upsert in {secs:.1f} s "
            f"({n / secs:,.0f} vectors/s)",
            flush=True,
        )
        strong._connect().flush(name, timeout=300)  # seal the segments: the steady state of a library
        report["server_upsert_per_s"] = round(n / secs)
        for label, store in (("Strong", strong), ("Session", session)):
            res = measure(store, name, queries[:nq], data, f"server {label}")
            report[f"server_{label}"] = res
            print_table(
                f"\nMilvus 2.3 server, {n:,} x {DIM}-d FLAT, top-10, MilvusVectorStore.search, "
                f"consistency {label} (medians):",
                res,
            )
        strong.drop_collection(name)
        strong.close()
        session.close()
    if not args.no_lite:
        n_lite = 2_000 if args.quick else n
        base = OUT / f"filter_lite_{uuid.uuid4().hex[:8]}"
        try:
            lite = MilvusVectorStore(str(base / "milvus.db"), timeout_s=600)
            sub = tuple(x[:n_lite] for x in data)
            secs = fill(lite, "bench_filter", ids[:n_lite], *sub)
            print(
                f"\nMilvus Lite: upserted {n_lite:,} vectors in {secs:.1f} s ({n_lite / secs:,.0f} vectors/s)",
                flush=True,
            )
            report["lite_upsert_per_s"] = round(n_lite / secs)
            # Rows still in Lite's MemTable (up to 128 MB of them are kept unflushed) are searched
            # by a per-row Python conversion: show that, then flush and measure the steady state.
            before = []
            for q in queries[:3]:
                t = time.perf_counter()
                lite.search("bench_filter", q, 10)
                before.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            lite._connect().flush("bench_filter", timeout=600)
            report["lite_flush_s"] = round(time.perf_counter() - t, 2)
            report["lite_unflushed_none_median_ms"] = round(median(before), 1)
            print(
                f"Milvus Lite, before flush: no-filter search median {median(before):,.0f} ms (3 queries); "
                f"flush took {report['lite_flush_s']} s",
                flush=True,
            )
            res = measure(lite, "bench_filter", queries[:lite_q], sub, "lite", exact_checks=1)
            report["lite"] = res
            print_table(
                f"Milvus Lite 3.x (file, in-process), {n_lite:,} x {DIM}-d FLAT, top-10 (medians; "
                f"known slow at this size):",
                res,
            )
            report["lite_tags_via_sql"] = tags_via_sql(lite, base, ids[:n_lite], sub, queries[:lite_q], res)
            lite.close()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\ntotal bench time {time.perf_counter() - t_all:.0f} s; load average now {other_load():.2f}")
    print(
        json.dumps(
            {"bench": "filter", "n": n, "quick": args.quick, "machine": machine(), **report},
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
