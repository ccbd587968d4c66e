"""scripts/crosscheck.sh --collection C: the recall@10 a live collection reaches on its own
vectors, its index against exact search (operations/evaluation/live_recall.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from operations.domain import IndexSpec
from operations.evaluation.live_recall import live_recall
from operations.load import load_split
from operations.progress import Counter
from tests.fixtures_stack import backend_settings
from tests.stack import make_services, tiny_encoder, unique, write_dataset

REPO = Path(__file__).resolve().parent.parent.parent
N = 1500


def _recall_by_hand(svc, name: str, ids: list[int], feats: np.ndarray, picked: list[int]) -> float:
    """recall@10 of the store for these query ids, its own id left out (numpy, not the module)."""
    pos = {i: k for k, i in enumerate(ids)}
    total = 0.0
    for q in picked:
        v = feats[pos[q]]
        scores = feats @ v
        order = sorted((i for i in ids if i != q), key=lambda i: (-scores[pos[i]], i))[:10]
        got = [h.id for h in svc.vectors.search(name, v, 11)[0] if h.id != q][:10]
        total += len(set(order) & set(got)) / 10
    return total / len(picked)


@pytest.fixture(params=["lite", "server"])
def loaded(request, tmp_path):
    settings = backend_settings(request, tmp_path, request.param)
    svc = make_services(settings)
    data = settings.data_root / "ds"
    ids, feats = write_dataset(data, "valid", N, tiny_encoder().dim, seed=7)
    yield settings, svc, data, ids, feats
    svc.vectors.close()
    svc.images.close()


def test_exact_index_reaches_1_and_a_coarse_one_what_it_reaches(loaded):
    settings, svc, data, ids, feats = loaded
    flat, ivf = unique("lrflat"), unique("lrivf")
    load_split(svc, flat, data, "valid", Counter(), index=IndexSpec("FLAT"))
    # One probed list of 64 over uniform vectors: far from exact, on purpose.
    load_split(svc, ivf, data, "valid", Counter(), index=IndexSpec("IVF_FLAT", {"nlist": 64}, {"nprobe": 1}))
    r = live_recall(svc.vectors, svc.images, flat, sample=40, block=400)
    assert r["queries"] == 40 and r["vectors"] == N and r["recall@10"] == 1.0 and r["index_type"] == "FLAT"
    r = live_recall(svc.vectors, svc.images, ivf, sample=40, block=400, seed=1)
    assert r["queries"] == 40 and r["index_type"] == "IVF_FLAT" and r["search_params"] == {"nprobe": 1}
    if settings.milvus_uri.startswith("http"):
        # The 2.3 server searches segments this small (< 1,024 rows) without their index: exact.
        assert r["recall@10"] == 1.0
    else:
        assert r["recall@10"] < 0.9
    picked = sorted(np.random.default_rng(1).choice(np.asarray(ids, np.int64), 40, replace=False).tolist())
    assert r["recall@10"] == pytest.approx(_recall_by_hand(svc, ivf, ids, feats, picked), abs=1e-9)


@pytest.mark.parametrize("loaded", ["server"], indirect=True)
def test_crosscheck_script_reports_a_live_collection(loaded):
    """On the server stack (a Milvus Lite file stays locked by the process that opened it)."""
    settings, svc, data, ids, feats = loaded
    name = unique("lrsh")
    load_split(svc, name, data, "valid", Counter(), index=IndexSpec("FLAT"))
    env = {
        **os.environ,
        "MILVUS_URI": settings.milvus_uri,
        "MYSQL_URL": settings.mysql_url,
        "SQLITE_PATH": str(settings.sqlite_path),
        "MODEL_NAME": "tiny",
    }
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "crosscheck.sh"),
            "--collection",
            name,
            "--sample",
            "20",
            "--min-recall",
            "0.99",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["collection"] == name and out["recall@10"] == 1.0 and out["queries"] == 20
    missing = subprocess.run(
        ["bash", str(REPO / "scripts" / "crosscheck.sh"), "--collection", "no_such_collection"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "no_such_collection" in missing.stderr
