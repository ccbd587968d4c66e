"""How soon another process sees a write on the Milvus 2.3 server (README "Many replicas").

Two processes, each with its own `MilvusVectorStore` (own gRPC channel), on one collection of
2,000 flushed 32-d rows (FLAT):
- the writer upserts one new vector (or deletes it) and tells the reader the moment its call
  returned;
- the reader, reading as the service does (Bounded), searches that vector in a loop until the
  write shows (or is gone), and reports whether its first search already saw it and how long
  after the writer's return it first did.

Two writers: the service's own (MILVUS_CONSISTENCY=Adaptive: the write returns after one Strong
probe, `wait_visible`) and one that does not probe (a fixed Bounded level, e.g. another tool
writing to the same collection). Same machine, so `time.monotonic` is one clock for both.

    python -m bench.bench_replicas [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import numpy as np

from bench._common import machine, median, other_load, pct, services, table
from operations.domain import IndexSpec
from operations.stores.milvus_store import MilvusVectorStore

DIM = 32
BASE_ROWS = 2000
POLL_TIMEOUT_S = 30.0


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.standard_normal((n, DIM)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _reader(uri: str, collection: str, conn) -> None:
    store = MilvusVectorStore(uri, timeout_s=10)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            want, image_id, vector, returned = msg
            first, tries = None, 0
            while True:
                hits = store.search(collection, np.asarray([vector], dtype=np.float32), 1)[0]
                seen_at = time.monotonic()
                tries += 1
                present = bool(hits) and hits[0].id == image_id
                ok = present if want == "add" else not present
                if first is None:
                    first = ok
                if ok or seen_at - returned > POLL_TIMEOUT_S:
                    conn.send((first, max(0.0, seen_at - returned), tries, ok))
                    break
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    with services(mariadb=False) as (_, mv):
        assert mv is not None
        setup = MilvusVectorStore(mv.uri, timeout_s=30)
        collection = f"bench_replicas_{int(time.time())}"
        setup.create_collection(collection, DIM, "bench", IndexSpec("FLAT"))
        setup.upsert(collection, list(range(1, BASE_ROWS + 1)), _unit(rng, BASE_ROWS), visible=False)
        setup.flush(collection, bulk=True)
        parent, child = multiprocessing.Pipe()
        reader = multiprocessing.get_context("spawn").Process(
            target=_reader, args=(mv.uri, collection, child)
        )
        reader.start()
        next_id = 10_000_000
        try:
            for mode, consistency in (
                ("writer probes (Adaptive)", "Adaptive"),
                ("no probe (Bounded)", "Bounded"),
            ):
                writer = MilvusVectorStore(mv.uri, timeout_s=30, consistency=consistency)
                rows: dict[str, list] = {"add": [], "delete": []}
                write_s: dict[str, list[float]] = {"add": [], "delete": []}
                for _ in range(args.rounds):
                    next_id += 1
                    vector = _unit(rng, 1)
                    t = time.monotonic()
                    writer.upsert(collection, [next_id], vector)
                    returned = time.monotonic()
                    write_s["add"].append(returned - t)
                    parent.send(("add", next_id, vector[0].tolist(), returned))
                    rows["add"].append(parent.recv())
                    t = time.monotonic()
                    writer.delete(collection, [next_id])
                    returned = time.monotonic()
                    write_s["delete"].append(returned - t)
                    parent.send(("delete", next_id, vector[0].tolist(), returned))
                    rows["delete"].append(parent.recv())
                writer.close()
                for op in ("add", "delete"):
                    got = rows[op]
                    lags = [r[1] * 1000 for r in got]
                    results.append(
                        {
                            "writer": mode,
                            "op": op,
                            "first_search_saw_it": sum(r[0] for r in got),
                            "rounds": len(got),
                            "never": sum(not r[3] for r in got),
                            "lag_ms_median": round(median(lags), 1),
                            "lag_ms_p90": round(pct(lags, 90), 1),
                            "lag_ms_max": round(max(lags), 1),
                            "write_ms_median": round(median([s * 1000 for s in write_s[op]]), 1),
                        }
                    )
        finally:
            parent.send(None)
            reader.join(timeout=30)
            setup.drop_collection(collection)
            setup.close()
    print(
        table(
            ["writer", "op", "first search saw it", "lag median ms", "p90", "max", "write call median ms"],
            [
                [
                    r["writer"],
                    r["op"],
                    f"{r['first_search_saw_it']}/{r['rounds']}",
                    r["lag_ms_median"],
                    r["lag_ms_p90"],
                    r["lag_ms_max"],
                    r["write_ms_median"],
                ]
                for r in results
            ],
        )
    )
    print(f"load average (1 min) at the end: {other_load():.2f}")
    print(json.dumps({"bench": "replicas", "machine": machine(), "results": results}))


if __name__ == "__main__":
    main()
