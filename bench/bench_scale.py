"""A million images through the CLI loader into the Milvus 2.3 server + MariaDB.

    python -m bench.bench_scale [--n 1000000] [--step 100000] [--quick] [--no-wait-index]
                                [--search] [--queries 50] [--keep] [--bulk-import]

The data (kept in bench/out/scale_n{N}_seed{S}/ between runs; `meta.json`, written last, marks
it complete): N small JPEGs (2-5 KB, 96-160 px textures: a pool of distinct base images, each
image a base with its id in a COM segment, so every image's bytes and sha256 are its own) as
base64 in Chinese-CLIP's tsv, and N realistic 1024-d features (bench/realistic_features.py:
narrow cone, clusters, near-duplicates) in its feature jsonl.

The run: `python -m scripts.cli load` as a user runs it (INDEX_TYPE=AUTO, RN50 configured with
random weights: with features it never encodes), its own process. Every second the bench reads
MAX(id) of the image table (the loader writes in id order, so it is the progress), the
loader's resident memory and each server's. It prints images/s for each `--step` images,
the first counted from the first row stored (the loader's start-up is printed apart; a
slowdown as the table and the segments grow would show in the steps), peak RSS of the loader and of
each server, the disk each store uses, then (unless --no-wait-index) the seconds until Milvus
reports every row indexed, and until the indexes of compacted segments are built too.
`--search` then measures what a user gets at that size: live recall@10 of the collection on
its own vectors (`imgsearch eval live-recall`) and the median of
`POST /img/search` from one client over distinct Chinese queries (a uvicorn server on the same
stores). `--quick`: 5,000 images in steps of 1,000. The collection is dropped at the end
unless --keep.

`--bulk-import`: the same load with `load --bulk-import` (the server imports the vectors from
JSON files written under bench/out/milvus-import/). The steps then follow the SQL rows, which
run ahead of the vectors; the overall rate is until the command returns, when every row is
imported, visible and marked.

A loader that stops on an error is run again (`--attempts`, 2 runs in all), as a user would:
loads resume. Each failure is printed and kept in the report; the rate counts the whole time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench._common import machine, median, other_load, pct, proc_status_kb, services, table, tree_rss_mb

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
SPLIT = "scale"
DIM = 1024
KB = 1024
MIN_KB, MAX_KB = 2, 5
POOL = 256  # distinct base pictures (fewer for a small n, where making them would dominate)


# ----------------------------------------------------------------------------- data


def small_jpeg(seed: int) -> bytes:
    """One base JPEG of 96-160 px, 2-5 KB (the noise amplitude bisected towards a target size)."""
    from bench.gen_split import _encode, _texture, fit_jpeg_size

    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(96, 161, 2))
    target = rng.uniform(2.3, 4.7) * KB
    base, noise = _texture(rng, width, height)
    size_range = (MIN_KB * KB, MAX_KB * KB - 64)
    for quality in (85, 70, 55, 40):  # a smooth texture may exceed the target even without noise
        if len(_encode(base, quality)) > size_range[1]:
            continue
        best = fit_jpeg_size(base, noise, quality, target, size_range, 0.08)
        if size_range[0] <= len(best) <= size_range[1]:
            return best
    raise RuntimeError(f"no 2-5 KB JPEG for seed {seed}")


def ensure_data(n: int, seed: int, log=print, out_dir: Path = OUT) -> Path:
    from bench.gen_split import unique_jpeg
    from bench.realistic_features import cached
    from datasets.formats import FeatureWriter, write_image_tsv

    d = out_dir / f"scale_n{n}_seed{seed}"
    meta_path = d / "meta.json"
    if meta_path.is_file():
        return d
    t0 = time.perf_counter()
    d.mkdir(parents=True, exist_ok=True)
    pool = [small_jpeg(seed * 1_000_003 + i) for i in range(min(POOL, max(16, n // 20)))]
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(pool), n)
    sizes = np.zeros(n, np.int32)

    def images():
        for k in range(n):
            data = unique_jpeg(pool[choice[k]], f"scale n={n} seed={seed} id={k + 1}")
            sizes[k] = len(data)
            yield k + 1, data

    write_image_tsv(d / f"{SPLIT}_imgs.tsv", images())
    feats = cached(n, seed, out_dir)
    with FeatureWriter(d / f"{SPLIT}_imgs.img_feat.jsonl", "image_id") as w:
        for start in range(0, n, 4096):
            block = np.asarray(feats[start : start + 4096], np.float32)
            w.write(list(range(start + 1, start + 1 + len(block))), block)
    meta = {
        "n": n,
        "seed": seed,
        "jpeg_kb": {
            "min": round(float(sizes.min()) / KB, 2),
            "median": round(float(np.median(sizes)) / KB, 2),
            "max": round(float(sizes.max()) / KB, 2),
            "mean": round(float(sizes.mean()) / KB, 2),
        },
        "tsv_bytes": (d / f"{SPLIT}_imgs.tsv").stat().st_size,
        "feat_bytes": (d / f"{SPLIT}_imgs.img_feat.jsonl").stat().st_size,
        "generated_s": round(time.perf_counter() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"generated {n:,} images and features in {meta['generated_s']} s -> {d}")
    return d


# ----------------------------------------------------------------------------- measuring


def disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (the Milvus standalone server forks)."""
    return int(tree_rss_mb(pid) * 1024)


def max_id(conn, table_name: str) -> int:
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT MAX(id) FROM `{table_name}`")  # a validated collection name, not input
            (value,) = cur.fetchone()
        conn.commit()  # a fresh snapshot next time (REPEATABLE READ)
        return int(value or 0)
    except Exception:  # the table does not exist yet
        conn.rollback()
        return 0


def crossing(samples: list[tuple[float, int]], count: int) -> float:
    """When the loaded count reached `count`: linear between the two samples around it
    (sampled once a second, several steps may pass between two samples on a small run)."""
    for (t_a, a), (t_b, b) in zip(samples, samples[1:], strict=False):
        if b >= count:
            return t_a + (t_b - t_a) * (count - a) / (b - a) if b > a else t_b
    return samples[-1][0]


def wait_indexed(uri: str, collection: str, n: int, timeout_s: float, index: str = "vector") -> dict:
    """Seconds until Milvus first reports all `n` rows indexed, and until nothing is left
    pending (None past `timeout_s`). The two differ: the 2.3 server seals segments of about
    a fifth of `dataCoord.segment.maxSize`, indexes them, then compacts them into larger
    segments whose indexes are built again; rows wait in "pending" meanwhile, and a search
    runs over every segment until then."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, timeout=120)
    t0 = time.perf_counter()
    first: float | None = None
    try:
        while time.perf_counter() - t0 < timeout_s:
            info = client.describe_index(collection, index)
            if first is None and int(info.get("indexed_rows", 0)) >= n:
                first = time.perf_counter() - t0
            if first is not None and int(info.get("pending_index_rows", 0)) == 0:
                return {"indexed_s": round(first, 1), "settled_s": round(time.perf_counter() - t0, 1)}
            time.sleep(5)
        return {"indexed_s": None if first is None else round(first, 1), "settled_s": None}
    finally:
        client.close()


def search_latency(env: dict, collection: str, n_queries: int, log_path: Path) -> dict:
    import httpx

    from bench._common import UvicornProcess
    from bench.bench_search import queries

    qs = queries(n_queries + 5, seed=7)
    with UvicornProcess({**env, "DEFAULT_COLLECTION": collection}, log_path) as server:
        times: list[float] = []
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for k, q in enumerate(qs):
                t = time.perf_counter()
                r = http.post("/img/search", json={"query": q, "top_k": 10, "collection": collection})
                r.raise_for_status()
                if k >= 5:  # the first few warm the server up
                    times.append((time.perf_counter() - t) * 1000)
    return {"queries": len(times), "median_ms": round(median(times), 1), "p90_ms": round(pct(times, 90), 1)}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--step", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="5,000 images in steps of 1,000")
    ap.add_argument("--no-wait-index", action="store_true", help="stop when the load returns")
    ap.add_argument("--index-timeout", type=float, default=7200.0)
    ap.add_argument("--search", action="store_true", help="live recall@10 and POST /img/search median")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the collection and its table")
    ap.add_argument("--bulk-import", action="store_true", help="load --bulk-import instead of streaming")
    ap.add_argument("--bulk-file-rows", type=int, default=None, help="with --bulk-import: rows per file")
    ap.add_argument(
        "--attempts", type=int, default=2, help="runs of the loader when it stops on an error (loads resume)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.step = 5000, 1000
    load_before = other_load()
    print(f"load average before start: {load_before:.2f} (2 cores)", flush=True)
    t_all = time.perf_counter()
    data_dir = ensure_data(args.n, args.seed)
    meta = json.loads((data_dir / "meta.json").read_text())
    print(
        f"data: {args.n:,} images, JPEG {meta['jpeg_kb']['min']}-{meta['jpeg_kb']['max']} KB "
        f"(median {meta['jpeg_kb']['median']}); tsv {meta['tsv_bytes'] / 2**30:.2f} GiB, "
        f"features {meta['feat_bytes'] / 2**30:.2f} GiB",
        flush=True,
    )
    collection = f"scale_{args.n}"
    mode = "bulk" if args.bulk_import else "stream"
    report: dict = {
        "bench": "scale",
        "n": args.n,
        "step": args.step,
        "mode": mode,
        "data": meta,
        "machine": machine(),
    }
    with services() as (db, mv):
        assert db is not None and mv is not None
        env = {
            "MODEL_NAME": "RN50",
            "MODEL_RANDOM_INIT": "true",
            "MILVUS_URI": mv.uri,
            "MYSQL_URL": db.url,
            "INDEX_TYPE": "AUTO",
            "MILVUS_TIMEOUT_S": "120",
            "SQL_TIMEOUT_S": "120",
            "DEVICE": "cpu",
            "MILVUS_IMPORT_DIR": str(OUT / "milvus-import"),
        }
        disk_before = {"mariadb": disk_bytes(db.datadir), "milvus": disk_bytes(mv.base)}
        suffix = "_bulk" if args.bulk_import else ""
        out_path = OUT / f"scale_{args.n}{suffix}_loader.out"
        err_path = OUT / f"scale_{args.n}{suffix}_loader.err"
        cmd = [sys.executable, "-m", "scripts.cli", "load", "--dataset", str(data_dir)]
        cmd += ["--split", SPLIT, "--collection", collection]
        cmd += ["--bulk-import"] if args.bulk_import else []
        cmd += ["--bulk-file-rows", str(args.bulk_file_rows)] if args.bulk_file_rows else []
        conn = db.connect(read_timeout=120)
        t0 = time.perf_counter()
        samples: list[tuple[float, int]] = [(0.0, 0)]
        peak = {"loader": 0, "mariadb": 0, "milvus": 0}
        failures: list[dict] = []
        err_path.write_bytes(b"")  # this run's stderr only; each attempt appends to it
        # A load that stops on an error is run again, as a user would: loads resume (rows
        # already stored are skipped, a bulk load settles the files the stopped run left). The
        # report keeps each failure and its time; the rate counts the whole wall time.
        for attempt in range(1, args.attempts + 1):
            with open(out_path, "wb") as out, open(err_path, "ab") as err:  # files: a pipe could fill
                loader = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=err)
            while loader.poll() is None:
                time.sleep(1.0)
                samples.append((time.perf_counter() - t0, max_id(conn, f"img_{collection}")))
                if samples[-1][1] // args.step > samples[-2][1] // args.step:
                    print(f"  {samples[-1][1]:>9,} images at {samples[-1][0]:7.1f} s", flush=True)
                for name, pid in (("loader", loader.pid), ("mariadb", db.pid), ("milvus", mv.pid)):
                    try:  # VmHWM: the peak since the process started (the Milvus tree: summed now)
                        rss = proc_status_kb("VmHWM", pid) if name != "milvus" else tree_rss_kb(pid)
                    except OSError:
                        continue
                    peak[name] = max(peak[name], rss)
            if loader.returncode == 0:
                break
            tail = err_path.read_text(errors="replace")[-3000:]
            failures.append(
                {
                    "attempt": attempt,
                    "at_s": round(time.perf_counter() - t0, 1),
                    "rows": samples[-1][1],
                    "tail": tail,
                }
            )
            print(f"the loader failed ({loader.returncode}) at {failures[-1]['at_s']} s:\n{tail}", flush=True)
        load_s = time.perf_counter() - t0
        conn.close()
        if loader.returncode != 0:
            raise SystemExit(f"the loader failed {len(failures)} times; the last:\n{failures[-1]['tail']}")
        text = out_path.read_text()
        loaded = json.loads(text[text.index("{") :])
        samples.append((load_s, args.n))
        first_row_s = crossing(samples, 1)
        bounds = [first_row_s, *(crossing(samples, k * args.step) for k in range(1, args.n // args.step + 1))]
        steps = [
            {
                "images": k * args.step,
                "at_s": round(bounds[k], 1),
                "rate": round(args.step / max(bounds[k] - bounds[k - 1], 1e-9)),
            }
            for k in range(1, len(bounds))
        ]
        rates = [s["rate"] for s in steps]
        print(
            table(
                ["images", "at s", "img/s in the step"],
                [[f"{s['images']:,}", s["at_s"], s["rate"]] for s in steps],
            )
        )
        report["load"] = {
            "seconds": round(load_s, 1),
            "rate": round(args.n / load_s),
            "loaded": loaded.get("loaded"),
            "failed": loaded.get("failed"),
            "bulk_import": loaded.get("bulk_import"),
            "steps": steps,
            "first_row_s": round(first_row_s, 1),
            "failed_attempts": [{k: f[k] for k in ("attempt", "at_s", "rows")} for f in failures],
            "slowest_step_vs_first": round(min(rates) / rates[0], 3) if rates else None,
            "peak_rss_mb": {k: round(v / 1024) for k, v in peak.items()},
        }
        print(
            f"{mode}: loaded {loaded.get('loaded')} (failed {loaded.get('failed')}) in {load_s:.1f} s: "
            f"{args.n / load_s:.0f} img/s overall; peak RSS MB {report['load']['peak_rss_mb']}",
            flush=True,
        )
        if not args.no_wait_index:
            report["index_wait"] = wait_indexed(mv.uri, collection, args.n, args.index_timeout)
            print(f"after the load returned, seconds until {report['index_wait']}", flush=True)
        report["disk_mb"] = {
            "mariadb": round((disk_bytes(db.datadir) - disk_before["mariadb"]) / 2**20),
            "milvus": round((disk_bytes(mv.base) - disk_before["milvus"]) / 2**20),
            "dataset_files": round((meta["tsv_bytes"] + meta["feat_bytes"]) / 2**20),
        }
        print(f"disk used, MB: {report['disk_mb']}", flush=True)
        if args.search:
            t = time.perf_counter()
            rc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "operations.evaluation.cli",
                    "live-recall",
                    "--collection",
                    collection,
                ],
                cwd=REPO,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=7200,
            )
            if rc.returncode == 0:
                recall = json.loads(rc.stdout[rc.stdout.index("{") :])
                keys = ("index_type", "search_params", "recall@10", "queries", "vectors")
                report["live_recall"] = {k: recall.get(k) for k in keys}
            else:
                report["live_recall"] = None
            print(
                f"live recall ({time.perf_counter() - t:.0f} s): {report['live_recall'] or rc.stderr[-2000:]}"
            )
            report["search"] = search_latency(
                env, collection, args.queries, OUT / f"scale_{args.n}_server.log"
            )
            print(f"POST /img/search, one client: {report['search']}", flush=True)
        if not args.keep:
            from pymilvus import MilvusClient

            client = MilvusClient(uri=mv.uri, timeout=120)
            client.drop_collection(collection)
            client.close()
            conn = db.connect()
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS `img_{collection}`")
            conn.close()
    report["total_s"] = round(time.perf_counter() - t_all)
    report["load_before"], report["load_after"] = load_before, other_load()
    print(
        f"total {report['total_s']} s; load average before {load_before:.2f}, now {report['load_after']:.2f}"
    )
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
