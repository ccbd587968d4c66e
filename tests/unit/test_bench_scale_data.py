"""The scale bench's data (bench/bench_scale.py) is what its docstring and bench/README say:
2-5 KB JPEGs that decode, each image's bytes its own, ids 1..N in the tsv and the features
in the same order, the features the realistic generator's rows, written once and reused."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from PIL import Image

from bench.bench_scale import MAX_KB, MIN_KB, ensure_data
from bench.realistic_features import cached
from datasets.formats import FeatureRecord, ImageRecord, iter_features, iter_image_tsv

N = 600


def test_small_jpegs_with_realistic_features(tmp_path) -> None:
    d = ensure_data(N, seed=1, log=lambda *_: None, out_dir=tmp_path)
    records = list(iter_image_tsv(d / "scale_imgs.tsv"))
    assert all(isinstance(r, ImageRecord) for r in records)
    images = [r for r in records if isinstance(r, ImageRecord)]
    assert [r.image_id for r in images] == list(range(1, N + 1))
    sizes = [len(r.data) for r in images]
    assert MIN_KB * 1024 <= min(sizes) and max(sizes) <= MAX_KB * 1024, (min(sizes), max(sizes))
    assert len({hashlib.sha256(r.data).digest() for r in images}) == N  # the store dedupes by sha256
    for r in images[:: N // 20]:
        with Image.open(io.BytesIO(r.data)) as im:
            im.load()
            assert im.format == "JPEG" and 96 <= min(im.size) and max(im.size) <= 160
    feats = [
        f
        for f in iter_features(d / "scale_imgs.img_feat.jsonl", "image_id", 1024)
        if isinstance(f, FeatureRecord)
    ]
    assert [f.id for f in feats] == list(range(1, N + 1))
    got = np.stack([f.vector for f in feats])
    assert np.array_equal(got, np.asarray(cached(N, 1, tmp_path), np.float32))
    meta = json.loads((d / "meta.json").read_text())
    assert meta["n"] == N and MIN_KB <= meta["jpeg_kb"]["min"] <= meta["jpeg_kb"]["max"] <= MAX_KB
    # A complete split is reused, not written again.
    before = (d / "scale_imgs.tsv").stat().st_mtime_ns
    assert ensure_data(N, seed=1, log=lambda *_: None, out_dir=tmp_path) == d
    assert (d / "scale_imgs.tsv").stat().st_mtime_ns == before
