"""Helpers to build a real service stack for tests (no pytest import)."""

from __future__ import annotations

import io
import time
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from config.settings import Settings, load_settings
from datasets.formats import write_features_jsonl, write_image_tsv
from operations.context import Services
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec
from operations.factory import build_services

REPO = Path(__file__).resolve().parent.parent
TINY_ARCH = REPO / "tests" / "data" / "tiny-arch.json"


@lru_cache(maxsize=1)
def tiny_encoder() -> ClipEncoder:
    """A random-weight cn_clip model (32-d), deterministic, loads in a second."""
    return ClipEncoder.load(
        ModelSpec(name="tiny", arch=str(TINY_ARCH), random_init=True, seed=0, device="cpu")
    )


def unique(prefix: str = "c") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def make_settings(tmp: Path, milvus_uri: str | None = None, mysql_url: str = "", **overrides) -> Settings:
    base = dict(
        model_name="tiny",
        model_arch=str(TINY_ARCH),
        model_random_init=True,
        milvus_uri=milvus_uri or str(tmp / "milvus.db"),
        mysql_url=mysql_url,
        sqlite_path=tmp / "images.sqlite3",
        data_root=tmp / "data",
        milvus_timeout_s=5,
        sql_timeout_s=5,
        default_collection="test",
        # No periodic repair rounds in the background of tests that do not ask for them
        # (tests/api/test_unindexed_repair.py does): a round would be one more writer.
        repair_interval_s=0,
    )
    base.update(overrides)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    return load_settings(**base)


def make_services(settings: Settings) -> Services:
    svc = build_services(settings, encoder=tiny_encoder())
    if svc.jobs is not None:
        svc.jobs.ensure_tables()
    return svc


def jpeg(seed: int, size: int = 48) -> bytes:
    """A small distinct JPEG: random blocks of colour."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8).repeat(size // 4, 0).repeat(size // 4, 1)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def write_dataset(
    dataset_dir: Path, split: str, n: int, dim: int, seed: int = 0, first_id: int = 1
) -> tuple[list[int], np.ndarray]:
    """A split with n images and precomputed unit features; returns (ids, features)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    ids = list(range(first_id, first_id + n))
    feats = unit_rows(n, dim, seed)
    write_image_tsv(dataset_dir / f"{split}_imgs.tsv", [(i, jpeg(seed * 100_000 + i)) for i in ids])
    write_features_jsonl(dataset_dir / f"{split}_imgs.img_feat.jsonl", "image_id", ids, feats)
    return ids, feats


def exact_top_k(query: np.ndarray, ids: list[int], feats: np.ndarray, k: int) -> list[int]:
    scores = feats @ query
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order[:k]]


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """A /metrics answer as {(sample name, labels): value} (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric_families(text: str) -> dict[str, str]:
    """The metric families a /metrics answer declares: {name as queried: type}. Counters are
    queried with `_total`, histograms through `_bucket`, `_sum` and `_count`."""
    names = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind == "histogram":
                names.update({f"{name}_bucket": kind, f"{name}_sum": kind, f"{name}_count": kind})
            elif kind == "counter" and not name.endswith("_total"):
                names[f"{name}_total"] = kind
            else:
                names[name] = kind
    return names


def fill_images(
    svc: Services, collection: str, rows: list[tuple[int, str, int]], dim: int, batch: int = 20_000
) -> None:
    """Store (id, source, created_at) rows straight through both stores, fast: a tiny image
    string (nothing decodes it), a random unit vector, marked indexed. No encoder."""
    from operations.domain import ImageRow, VectorAttrs

    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        ids = [i for i, _, _ in part]
        images = [
            ImageRow(id=i, sha256=f"{i:064x}", image_b64="AA==", source=s, created_at=t) for i, s, t in part
        ]
        result = svc.images.insert_rows(collection, images)
        assert len(result.inserted) == len(part), result
        svc.vectors.upsert(
            collection,
            ids,
            unit_rows(len(part), dim, seed=start),
            [VectorAttrs(s, (), t) for _, s, t in part],
            visible=False,
        )
        svc.images.mark_indexed(collection, ids)
    svc.vectors.flush(collection, bulk=True)


def wait_job(
    client, job_id: str, timeout: float = 300, poll_s: float = 0.02, through_errors: bool = False
) -> dict:
    """Poll `GET /img/jobs/{job_id}` until the job has ended (any state but queued or running)
    and return its view. A short poll: tests wait on many small jobs, and each poll is one
    indexed read. through_errors: keep polling through non-200 answers (a fault test has
    stopped a store); such tests poll less often, as a user's client would."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = client.get(f"/img/jobs/{job_id}")
        if r.status_code != 200 and not through_errors:
            raise AssertionError(f"GET /img/jobs/{job_id}: {r.status_code} {r.text}")
        if r.status_code == 200:
            last = r.json()
            if last["state"] not in ("queued", "running"):
                return last
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {last}")
