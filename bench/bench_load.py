"""Load throughput and peak memory: `operations.load.load_split` against a naive loader.

    python -m bench.bench_load [--quick] [--n 31783] [--runs 1] [--no-naive] [--no-cli] [--no-ceiling]
                               [--experiment no-mark] [--profile] [--mysql-arg=--innodb-...]

Real services: a private MariaDB (scripts.dev_services.mariadb_server) and the Milvus
2.3 server (scripts.dev_services.milvus_server); collections FLAT, consistency Strong.
The split (1024-d features + 20-80 KB JPEGs) comes from bench.gen_split.

Every load runs in its own child process, so each peak RSS (wait4's ru_maxrss
of that child) is its own. Rows:

- ours: `load_split` with the stores built directly (no model: the features
  are precomputed, so the encoder is never called). The time is the
  `load_split` call itself (feature index, reading, SQL, Milvus, marking).
- naive: what users write first: read the whole tsv and the feature jsonl into
  memory (json.loads), `MilvusClient.insert` all vectors in batches of 1,000,
  then one `executemany` of all rows into MySQL and a commit. It stores the
  same columns (sha256, mime, width, height, ...) in the same table schema, so
  both do the same work; only the shape of the loading differs.
- ours, 1/4 split: the same loader on a split a quarter the size: its peak RSS
  should be the same (streaming), its rate about the same.
- CLI: `python -m scripts.cli load` as a user runs it (MODEL_NAME=RN50 with
  random weights configured; with features it never encodes, so it never
  imports torch), on the 1/4 split, to show what the whole process costs.
- ceilings (1/4 split): each store alone with the data already in memory, the
  same statements as ours: MySQL INSERT of the rows (256 per transaction) and
  `MilvusVectorStore.upsert` of the vectors. No loader can beat these here.

Runs are interleaved (ours, naive, ours, naive, ...) so a drift of the machine
hits both; the table shows medians over --runs (default 1: a full-size load is
not cheap; use --runs 3 for medians). After each run the rows are counted in
both stores (must equal N, all indexed=1) and the collection and table dropped.
The machine's load average is printed: other work on the 2 cores skews all
absolute numbers, the same-run ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench._common import (
    BULK_MARIADB_ARGS,
    last_json,
    machine,
    median,
    other_load,
    proc_status_kb,
    run_child,
    table,
)

REPO = Path(__file__).resolve().parent.parent

OUT = REPO / "bench" / "out"


# ----------------------------------------------------------------------------- children


def _cpu_self() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_of(pid) -> float:
    """user+sys CPU seconds of a live process (a server), from /proc."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError):
        return float("nan")


class _StubEncoder:
    """Stands in for RN50 (1024-d): with precomputed features the encoder is never called."""

    model_name = "RN50"
    dim = 1024
    context_length = 52

    def check_text(self, text):  # pragma: no cover - not called
        raise AssertionError("not used by a load with features")

    def encode_texts(self, texts):  # pragma: no cover
        raise AssertionError("not used by a load with features")

    def encode_images(self, images):  # pragma: no cover
        raise AssertionError("a load with features must not encode images")


# The indexes the benches compare: FLAT (exact) and HNSW with Milvus' usual parameters.
INDEXES = {"FLAT": ("FLAT", {}, {}), "HNSW": ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 64})}


def index_spec(name: str | None):
    from operations.domain import IndexSpec

    kind, build, search = INDEXES[name or "FLAT"]
    return IndexSpec(kind, dict(build), dict(search)).check()


def child_ours(args) -> dict:
    from config.settings import load_settings
    from operations.context import EncoderRegistry, Services
    from operations.load import load_split
    from operations.progress import Counter
    from operations.stores.milvus_store import MilvusVectorStore
    from operations.stores.sql_image_store import SqlImageStore

    settings = load_settings(
        milvus_uri=args.milvus_uri,
        mysql_url=args.mysql_url,
        model_name="RN50",
        milvus_timeout_s=120,
        sql_timeout_s=120,
        **({"load_batch_size": args.batch_size} if args.batch_size else {}),
        **({"load_sql_writers": 1} if args.experiment == "one-writer" else {}),
    )
    vectors = MilvusVectorStore(
        settings.milvus_uri,
        "",
        settings.milvus_timeout_s,
        settings.milvus_consistency,
        settings.milvus_shards,
    )
    images = SqlImageStore.from_settings(
        settings.mysql_url, settings.sqlite_path, settings.sql_timeout_s, settings.sql_pool_size
    )
    svc = Services(
        settings=settings, encoders=EncoderRegistry(_StubEncoder()), vectors=vectors, images=images
    )

    # Busy time per stage (each stage is one thread, so the sums do not overlap within a stage).
    busy: dict[str, float] = {}

    def timed(obj, name, key):
        fn = getattr(obj, name)

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                busy[key] = busy.get(key, 0.0) + time.perf_counter() - t

        setattr(obj, name, wrapper)

    if args.experiment == "no-mark":
        # Measurement only (not a valid load: rows stay indexed=0): what the per-row UPDATE costs.
        images.mark_indexed = lambda collection, ids: None
    timed(images, "indexed_ids", "sql_indexed_ids")
    timed(images, "insert_rows", "sql_insert_rows")
    timed(vectors, "upsert", "milvus_upsert")
    timed(images, "mark_indexed", "sql_mark_indexed")
    # Fixed costs of a load, whatever its size: the collection's creation and
    # the final flush (which also waits for the collection's load).
    timed(svc, "ensure_collection", "create_collection")
    timed(vectors, "flush", "milvus_final_flush")
    rss_before = proc_status_kb("VmRSS")
    progress = Counter()
    cpu0 = _cpu_self()
    t0 = time.perf_counter()
    report = load_split(
        svc, args.collection, Path(args.dataset), args.split, progress, index=index_spec(args.index)
    )
    seconds = time.perf_counter() - t0
    cpu = _cpu_self() - cpu0
    vectors.close()
    images.close()
    return {
        "loaded": report.loaded + report.already_loaded,
        "failed": report.failed,
        "seconds": seconds,
        "cpu_s": round(cpu, 2),
        "rss_before_kb": rss_before,
        "vm_hwm_kb": proc_status_kb("VmHWM"),
        "busy_s": {k: round(v, 2) for k, v in busy.items()},
    }


def child_naive(args) -> dict:
    import base64
    import hashlib
    import io
    import json as stdjson

    import pymysql
    from PIL import Image
    from pymilvus import MilvusClient

    from operations.domain import IndexSpec
    from operations.stores.milvus_store import MilvusVectorStore
    from operations.stores.sql_image_store import SqlImageStore, table_name
    from operations.stores.sql_pool import MySQLParams

    rss_before = proc_status_kb("VmRSS")
    cpu0 = _cpu_self()
    t0 = time.perf_counter()
    # The same collection schema and table DDL as ours, so both store identical data.
    store = MilvusVectorStore(args.milvus_uri, "", 120, "Strong")
    store.create_collection(args.collection, 1024, "RN50", IndexSpec("FLAT"))
    store.close()
    SqlImageStore.from_settings(args.mysql_url, None, 120, 1).ensure_collection(args.collection)

    source, now = Path(args.dataset).name, int(time.time())
    tsv = Path(args.dataset) / f"{args.split}_imgs.tsv"
    feat = Path(args.dataset) / f"{args.split}_imgs.img_feat.jsonl"
    with open(tsv) as f:
        images = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    rows = []
    for image_id, b64 in images:
        data = base64.b64decode(b64)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        rows.append(
            (
                int(image_id),
                hashlib.sha256(data).hexdigest(),
                "image/jpeg",
                width,
                height,
                source,
                "",
                None,
                now,
                now,
                1,
                b64,
            )
        )
    features = {}
    with open(feat) as f:
        for line in f:
            obj = stdjson.loads(line)
            features[obj["image_id"]] = obj["feature"]
    t_read = time.perf_counter() - t0

    client = MilvusClient(uri=args.milvus_uri, timeout=120)
    data = [
        {"id": r[0], "vector": features[r[0]], "source": source, "tags": [], "created_at": now} for r in rows
    ]
    t = time.perf_counter()
    for start in range(0, len(data), 1000):
        client.insert(args.collection, data[start : start + 1000], timeout=120)
    t_milvus = time.perf_counter() - t
    client.close()

    p = MySQLParams.from_url(args.mysql_url)
    conn = pymysql.connect(
        host=p.host,
        port=p.port,
        user=p.user,
        password=p.password,
        database=p.database,
        charset="utf8mb4",
        read_timeout=600,
        write_timeout=600,
    )
    t = time.perf_counter()
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO `{table_name(args.collection)}` (id, sha256, mime, width, height, source, "
            "tags, external_id, created_at, added_at, indexed, image_b64) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    conn.commit()
    t_sql = time.perf_counter() - t
    conn.close()
    seconds = time.perf_counter() - t0
    return {
        "loaded": len(rows),
        "failed": 0,
        "seconds": seconds,
        "rss_before_kb": rss_before,
        "cpu_s": round(_cpu_self() - cpu0, 2),
        "vm_hwm_kb": proc_status_kb("VmHWM"),
        "busy_s": {
            "read_all": round(t_read, 2),
            "milvus_insert": round(t_milvus, 2),
            "sql_executemany": round(t_sql, 2),
        },
    }


def child_ceiling(args) -> dict:
    """Each store alone, data already in memory: the most any loader can reach here.

    SQL: the same INSERT path as `insert_rows` (`SqlPool.insert_many`:
    prepared multi-row statements, base64 as bytes; 256 rows a transaction).
    Milvus: `MilvusVectorStore.upsert` of all vectors, 256 a call.
    """
    import base64
    import hashlib

    import orjson

    from operations.domain import IndexSpec, VectorAttrs
    from operations.stores.milvus_store import MilvusVectorStore
    from operations.stores.sql_image_store import SqlImageStore, table_name

    tsv = Path(args.dataset) / f"{args.split}_imgs.tsv"
    feat = Path(args.dataset) / f"{args.split}_imgs.img_feat.jsonl"
    now = int(time.time())
    rows = []
    with open(tsv) as f:
        for line in f:
            image_id, b64 = line.rstrip("\n").split("\t")
            rows.append(
                (
                    int(image_id),
                    hashlib.sha256(base64.b64decode(b64)).hexdigest(),
                    "image/jpeg",
                    400,
                    400,
                    "bench",
                    "",
                    None,
                    now,
                    now,
                    0,
                    b64,
                )
            )
    import numpy as np

    ids, vecs = [], []
    with open(feat, "rb") as f:
        for line in f:
            obj = orjson.loads(line)
            ids.append(obj["image_id"])
            vecs.append(obj["feature"])
    vectors = np.asarray(vecs, dtype=np.float32)
    del vecs
    store = SqlImageStore.from_settings(args.mysql_url, None, 120, 1)
    store.ensure_collection(args.collection)
    columns = (
        "id",
        "sha256",
        "mime",
        "width",
        "height",
        "source",
        "tags",
        "external_id",
        "created_at",
        "added_at",
        "indexed",
        "image_b64",
    )
    t = time.perf_counter()
    for start in range(0, len(rows), 256):
        store.pool.insert_many(
            f"`{table_name(args.collection)}`",
            columns,
            rows[start : start + 256],
            ignore=True,
            binary_columns=("image_b64",),
        )
    t_sql = time.perf_counter() - t
    store.pool.execute(f"UPDATE `{table_name(args.collection)}` SET indexed = 1")
    store.close()
    mv = MilvusVectorStore(args.milvus_uri, "", 120, "Strong")
    mv.create_collection(args.collection, vectors.shape[1], "RN50", IndexSpec("FLAT"))
    attrs = [VectorAttrs("bench", (), now)] * len(ids)
    t = time.perf_counter()
    for start in range(0, len(ids), 256):
        mv.upsert(
            args.collection,
            ids[start : start + 256],
            vectors[start : start + 256],
            attrs[start : start + 256],
        )
    t_milvus = time.perf_counter() - t
    mv.close()
    return {
        "loaded": len(rows),
        "sql_only_rate": len(rows) / t_sql,
        "milvus_only_rate": len(ids) / t_milvus,
        "sql_s": round(t_sql, 2),
        "milvus_s": round(t_milvus, 2),
        "seconds": t_sql + t_milvus,
        "failed": 0,
        "rss_before_kb": None,
        "busy_s": {},
    }


# ----------------------------------------------------------------------------- parent


def verify_and_drop(mv_uri: str, db, collection: str, expect: int, expect_indexed: bool = True) -> dict:
    import pymysql  # noqa: F401
    from pymilvus import MilvusClient

    client = MilvusClient(uri=mv_uri, timeout=60, dedicated=True)
    try:
        vec = client.query(
            collection, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=60
        )[0]["count(*)"]
        client.drop_collection(collection, timeout=60)
    finally:
        client.close()
    conn = db.connect(read_timeout=120)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*), SUM(indexed) FROM `img_{collection}`")
            rows, indexed = cur.fetchone()
            cur.execute(f"DROP TABLE `img_{collection}`")
    finally:
        conn.close()
    ok = int(vec) == expect and int(rows) == expect and (int(indexed or 0) == expect or not expect_indexed)
    return {"vectors": int(vec), "rows": int(rows), "indexed": int(indexed or 0), "ok": ok}


def child_argv(kind: str, mv, db, info, collection: str, *extra: str) -> list[str]:
    """Arguments (after the interpreter) of a child loading `info` into `collection`:
    `-m bench.bench_load --child KIND ...`; also used by bench_search."""
    return [
        "-m",
        "bench.bench_load",
        "--child",
        kind,
        "--milvus-uri",
        mv.uri,
        "--mysql-url",
        db.url,
        "--dataset",
        str(info.dataset_dir),
        "--split",
        info.split,
        "--collection",
        collection,
        *extra,
    ]


def profile_ours(info, mv, db, extra: list[str]) -> dict:
    """Run ours once under `py-spy record --threads` (on-CPU samples only) and summarise per thread."""
    import shutil

    if not shutil.which("py-spy"):
        print("  (py-spy not installed: pip install py-spy)")
        return {}
    collection = f"bl_prof_{info.n}"
    raw = OUT / f"profile_load_{info.n}.txt"
    args = [
        "record",
        "--rate",
        "200",
        "--threads",
        "--format",
        "raw",
        "-o",
        str(raw),
        "--",
        sys.executable,
        *child_argv("ours", mv, db, info, collection),
        *extra,
    ]
    rc, out, err, _, _ = run_child_exe(shutil.which("py-spy"), args)
    if rc != 0:
        print(f"  py-spy failed ({rc}): {err[-1500:]}")
        return {}
    res = last_json(out)
    verify_and_drop(mv.uri, db, collection, info.n)
    summary = summarise_profile(raw)
    print(
        f"\nProfile of ours (py-spy, {info.n:,} images, {res['seconds']:.1f} s under the profiler; "
        f"raw: {raw})"
    )
    for thread, t in summary.items():
        print(f"  thread {thread}: {t['samples']} on-CPU samples = {t['samples'] / 200:.1f} s of CPU")
        for name, share in t["top"]:
            print(f"      {share:6.1%}  {name}")
    return summary


def run_child_exe(exe: str, args: list[str]):
    import subprocess

    p = subprocess.run(
        [exe, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return p.returncode, p.stdout, p.stderr, 0, 0.0


# Frames that mean "this thread waits" (py-spy --idle keeps them so shares add up to wall time).
_WAIT_HINTS = (
    "wait (threading.py",
    "get (queue.py",
    "_wait_for_tstate_lock",
    "acquire",
    "recv_into",
    "_read_bytes (pymysql",
    "select (selectors",
    "_blocking_unary_unary",
    "result (grpc",
    "_wait_once",
    "poll (",
)


def summarise_profile(raw: Path, top: int = 12) -> dict:
    """Per thread: sample count, share not waiting, and the top frames by inclusive share.

    'Interesting' frames are the innermost frames of our code (operations/, datasets/)
    or the library call right below it, which is where the work is attributed.
    """
    threads: dict[str, dict] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread (")), "?")
        # process ; thread ; frames...
        frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        t = threads.setdefault(thread, {"samples": 0, "idle": 0, "by": {}})
        n = int(count)
        t["samples"] += n
        if any(h in frames[-1] for h in _WAIT_HINTS) if frames else True:
            t["idle"] += n
        key = _attribute(frames)
        t["by"][key] = t["by"].get(key, 0) + n
    out = {}
    for thread, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]):
        if t["samples"] < 20:
            continue
        name = _thread_name(thread)
        out[name] = {
            "samples": t["samples"],
            "active_share": 1 - t["idle"] / t["samples"],
            "top": [(k, v / t["samples"]) for k, v in sorted(t["by"].items(), key=lambda kv: -kv[1])[:top]],
        }
    return out


def _thread_name(thread: str) -> str:
    # "thread (0x7f...)" or "thread (0x..): \"name\""; py-spy raw puts the name after the id when known.
    return thread.replace("thread ", "")


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})"


def _attribute(frames: list[str]) -> str:
    """our innermost frame > the call it makes,
    e.g. 'insert_rows (sql_image_store.py) > executemany (cursors.py)'."""
    ours = [i for i, f in enumerate(frames) if " (operations/" in f or " (datasets/" in f or " (app/" in f]
    if not ours:
        return _short(frames[-1]) if frames else "?"
    i = ours[-1]
    head = _short(frames[i])
    tail = _short(frames[-1]) if i + 1 < len(frames) else "(self)"
    below = _short(frames[i + 1]) if i + 1 < len(frames) else ""
    return f"{head} > {below}" + (f" ... {tail}" if i + 2 < len(frames) else "")


def run_one(kind: str, info, mv, db, run: int, extra: list[str], label: str | None = None) -> dict:
    collection = f"bl_{(label or kind).replace('-', '_')}_{info.n}_{run}"
    if kind == "cli":
        env = {
            "MODEL_NAME": "RN50",
            "MODEL_RANDOM_INIT": "true",
            "MILVUS_URI": mv.uri,
            "MYSQL_URL": db.url,
            "MILVUS_TIMEOUT_S": "120",
            "SQL_TIMEOUT_S": "120",
            "DEVICE": "cpu",
        }
        t_start = time.perf_counter()
        rc, out, err, maxrss, wall = run_child(
            [
                "-m",
                "scripts.cli",
                "load",
                "--dataset",
                str(info.dataset_dir),
                "--split",
                info.split,
                "--collection",
                collection,
            ],
            env=env,
        )
        if rc != 0:
            raise RuntimeError(f"CLI load failed ({rc}):\n{err[-3000:]}")
        report = json.loads(out[out.index("{") :])
        res = {
            "loaded": report["loaded"] + report["already_loaded"],
            "failed": report["failed"],
            "seconds": report["seconds"],
            "rss_before_kb": None,
            "busy_s": {},
            "wall_s": time.perf_counter() - t_start,
        }
    else:
        cpu_db, cpu_mv = _cpu_of(db.pid), _cpu_of(mv.pid)
        rc, out, err, maxrss, wall = run_child(child_argv(kind, mv, db, info, collection, *extra))
        server_cpu = {
            "mariadbd_cpu_s": round(_cpu_of(db.pid) - cpu_db, 2),
            "milvus_cpu_s": round(_cpu_of(mv.pid) - cpu_mv, 2),
        }
        if rc != 0:
            raise RuntimeError(f"{kind} child failed ({rc}):\n{err[-3000:]}")
        res = last_json(out)
        res.update(server_cpu)
    res.update(
        kind=label or kind,
        n=info.n,
        run=run,
        peak_rss_kb=maxrss,
        wall_s=round(wall, 2),
        rate=res["loaded"] / res["seconds"],
    )
    res["check"] = verify_and_drop(mv.uri, db, collection, info.n, expect_indexed=label is None)
    cpu = ""
    if res.get("cpu_s") is not None and res.get("mariadbd_cpu_s") is not None:
        per = 1000 / res["loaded"]
        cpu = (
            f"  CPU ms/image: loader {res['cpu_s'] * per:.2f}, mariadbd {res['mariadbd_cpu_s'] * per:.2f}, "
            f"milvus {res['milvus_cpu_s'] * per:.2f}"
        )
    print(
        f"  {label or kind:<6} n={info.n:<6} run {run}: {res['seconds']:6.1f} s  {res['rate']:7.0f} img/s  "
        f"peak RSS {maxrss / 1024:6.0f} MB  busy {res.get('busy_s')}{cpu}  check {res['check']}",
        flush=True,
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 images (1/4: 250), no CLI row")
    ap.add_argument("--n", type=int, default=31_783)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs of each loader (a full-size load is not cheap: 1 keeps the run near 10 minutes)",
    )
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-cli", action="store_true", help="skip the scripts.cli row")
    ap.add_argument(
        "--no-ceiling", action="store_true", help="skip the per-store ceilings (on the 1/4 split)"
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="one more run of ours under py-spy (pip install py-spy): where the client's time goes",
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="LOAD_BATCH_SIZE for ours (default: settings)"
    )
    ap.add_argument(
        "--experiment",
        choices=["no-mark", "one-writer"],
        default=None,
        help="also run ours with a change, alternating with the real one (measurement only): "
        "no-mark = skip mark_indexed (rows stay indexed=0, so the row check is skipped); "
        "one-writer = LOAD_SQL_WRITERS=1 (one MySQL connection inserting instead of two)",
    )
    ap.add_argument(
        "--mysql-arg",
        action="append",
        default=[],
        help="extra mariadbd argument, e.g. --mysql-arg=--innodb-log-file-size=256M",
    )
    # child mode
    ap.add_argument("--child", choices=["ours", "naive", "ceiling"])
    for name in ("--milvus-uri", "--mysql-url", "--dataset", "--split", "--collection"):
        ap.add_argument(name)
    ap.add_argument("--index", choices=sorted(INDEXES), default="FLAT", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        import logging

        logging.basicConfig(level=logging.WARNING)
        res = {"ours": child_ours, "naive": child_naive, "ceiling": child_ceiling}[args.child](args)
        print(json.dumps(res))
        return

    from bench._common import services
    from bench.gen_split import QUICK_N, QUICK_POOL, ensure_split, print_summary

    n = QUICK_N if args.quick else args.n
    pool = QUICK_POOL if args.quick else 300
    runs = args.runs
    full = ensure_split(n, args.seed, pool_size=pool)
    quarter = ensure_split(n // 4, args.seed, pool_size=pool)
    print_summary(full)
    extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    results: list[dict] = []
    profile = None
    t_all = time.perf_counter()
    print(f"load average before start: {other_load():.2f} (2 cores; >0.5 means something else is running)")
    with services(mariadb_args=BULK_MARIADB_ARGS + tuple(args.mysql_arg)) as (db, mv):
        for run in range(1, runs + 1):
            results.append(run_one("ours", full, mv, db, run, extra))
            if not args.no_naive:
                results.append(run_one("naive", full, mv, db, run, []))
            if args.experiment:
                results.append(
                    run_one(
                        "ours",
                        full,
                        mv,
                        db,
                        run,
                        extra + ["--experiment", args.experiment],
                        label=args.experiment,
                    )
                )
        for run in range(1, runs + 1):
            results.append(run_one("ours", quarter, mv, db, run, extra))
        if not (args.no_cli or args.quick):
            results.append(run_one("cli", quarter, mv, db, 1, []))
        if not args.no_ceiling:
            results.append(run_one("ceiling", quarter, mv, db, 1, []))
        if args.profile:
            profile = profile_ours(full, mv, db, extra)

    def pick(kind, n_):
        return [r for r in results if r["kind"] == kind and r["n"] == n_]

    def summary(kind, n_):
        rs = pick(kind, n_)
        if not rs:
            return None
        return {
            "kind": kind,
            "n": n_,
            "runs": len(rs),
            "rate_median": median([r["rate"] for r in rs]),
            "seconds_median": median([r["seconds"] for r in rs]),
            "peak_rss_mb_median": median([r["peak_rss_kb"] for r in rs]) / 1024,
            "peak_rss_mb_max": max(r["peak_rss_kb"] for r in rs) / 1024,
            "rss_before_mb": median([r["rss_before_kb"] or 0 for r in rs]) / 1024,
            "cpu_ms_per_image": {
                k: median([r.get(k, float("nan")) * 1000 / r["loaded"] for r in rs])
                for k in ("cpu_s", "mariadbd_cpu_s", "milvus_cpu_s")
            },
            "all_ok": all(r["check"]["ok"] for r in rs),
        }

    rows_s = [
        s
        for s in (
            summary("ours", full.n),
            summary("naive", full.n),
            summary("ours", quarter.n),
            summary("cli", quarter.n),
        )
        if s
    ]
    labels = {
        ("ours", full.n): "ours (load_split)",
        ("naive", full.n): "naive baseline",
        ("ours", quarter.n): "ours, 1/4 split",
        ("cli", quarter.n): "scripts.cli load, 1/4 split (RN50 configured)",
    }
    print()
    print(
        f"Load of {full.n:,} images (1024-d features, JPEG median {full.meta['jpeg_sizes']['median_kb']} KB) "
        f"into Milvus 2.3 server (FLAT) + MariaDB; medians over runs"
    )
    print(
        table(
            [
                "loader",
                "images",
                "runs",
                "images/s",
                "seconds",
                "peak RSS MB",
                "RSS after imports MB",
                "CPU ms/img: loader",
                "mariadbd",
                "milvus",
                "counts ok",
            ],
            [
                [
                    labels[(s["kind"], s["n"])],
                    s["n"],
                    s["runs"],
                    s["rate_median"],
                    s["seconds_median"],
                    s["peak_rss_mb_median"],
                    s["rss_before_mb"] if s["kind"] != "cli" else float("nan"),
                    s["cpu_ms_per_image"]["cpu_s"],
                    s["cpu_ms_per_image"]["mariadbd_cpu_s"],
                    s["cpu_ms_per_image"]["milvus_cpu_s"],
                    "yes" if s["all_ok"] else "NO",
                ]
                for s in rows_s
            ],
        )
    )
    print(
        "(CPU ms/img: user+sys CPU of the loader process, of mariadbd and of the Milvus server "
        "during the load, "
        "per image; 1,000 images/s on 2 cores leaves 2 ms of CPU per image for all three together)"
    )
    ours, naive, quart = summary("ours", full.n), summary("naive", full.n), summary("ours", quarter.n)
    ratio = ours["rate_median"] / naive["rate_median"] if naive else None
    if ratio:
        print(
            f"ours / naive throughput: {ratio:.2f}x   peak RSS ours {ours['peak_rss_mb_median']:.0f} MB vs "
            f"naive {naive['peak_rss_mb_median']:.0f} MB"
        )
    print(
        f"peak RSS full vs 1/4 split (ours): {ours['peak_rss_mb_median']:.0f} MB "
        f"vs {quart['peak_rss_mb_median']:.0f} MB"
    )
    exp = summary(args.experiment, full.n) if args.experiment else None
    if exp:
        print(
            f"experiment {args.experiment}: {exp['rate_median']:,.0f} img/s "
            f"vs ours {ours['rate_median']:,.0f} img/s "
            f"({exp['rate_median'] / ours['rate_median']:.2f}x; measurement only, not a valid load)"
        )
    ceil = pick("ceiling", quarter.n)
    if ceil:
        c = ceil[0]
        print(
            f"ceilings on this machine now (data pre-read, each store alone, {quarter.n:,} rows): "
            "MySQL insert "
            f"{c['sql_only_rate']:,.0f} rows/s, Milvus upsert {c['milvus_only_rate']:,.0f} vectors/s"
        )
    print(
        f"target: >= 1,000 images/s -> {'met' if ours['rate_median'] >= 1000 else 'NOT met'}; "
        f"peak RSS < 1 GB -> {'met' if ours['peak_rss_mb_median'] < 1024 else 'NOT met'}"
    )
    print(f"total bench time {time.perf_counter() - t_all:.0f} s; load average now {other_load():.2f}")
    print(
        json.dumps(
            {
                "bench": "load",
                "n": full.n,
                "quick": args.quick,
                "machine": machine(),
                "ours_rate": round(ours["rate_median"], 1),
                "naive_rate": round(naive["rate_median"], 1) if naive else None,
                "ratio_ours_over_naive": round(ratio, 3) if ratio else None,
                "ours_peak_rss_mb": round(ours["peak_rss_mb_median"], 1),
                "naive_peak_rss_mb": round(naive["peak_rss_mb_median"], 1) if naive else None,
                "ours_quarter_peak_rss_mb": round(quart["peak_rss_mb_median"], 1),
                "ours_quarter_rate": round(quart["rate_median"], 1),
                "experiment": {"name": args.experiment, "rate": round(exp["rate_median"], 1)}
                if exp
                else None,
                "ceiling_sql_rows_per_s": round(ceil[0]["sql_only_rate"], 1) if ceil else None,
                "ceiling_milvus_vectors_per_s": round(ceil[0]["milvus_only_rate"], 1) if ceil else None,
                "cli_rate": round(summary("cli", quarter.n)["rate_median"], 1)
                if pick("cli", quarter.n)
                else None,
                "cli_peak_rss_mb": round(summary("cli", quarter.n)["peak_rss_mb_median"], 1)
                if pick("cli", quarter.n)
                else None,
                "profile": profile,
                "runs": [{k: v for k, v in r.items()} for r in results],
            }
        )
    )


if __name__ == "__main__":
    main()
