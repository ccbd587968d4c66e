"""The realistic feature generator (bench/realistic_features.py) has the properties it claims:
deterministic by seed whatever the chunking, unit vectors, a narrow cone, clusters and
near-duplicates, text queries apart from the images; and uniform vectors do not."""

from __future__ import annotations

import numpy as np
import pytest

from bench.realistic_features import FeatureModel, stats_of, uniform_stats

N = 3000


@pytest.fixture(scope="module")
def model() -> FeatureModel:
    return FeatureModel(N, seed=3, clusters=200)


@pytest.fixture(scope="module")
def stats(model: FeatureModel) -> dict:
    return stats_of(model, model.queries(200), probes=200)


def test_rows_are_unit_float32_and_deterministic_whatever_the_chunking(model: FeatureModel) -> None:
    whole = model.rows(0, N)
    assert whole.shape == (N, 1024) and whole.dtype == np.float32
    assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    chunked = np.concatenate([x for _, x in model.chunks(chunk=777)])
    assert np.array_equal(whole, chunked)
    # A range across a block boundary is the same slice of the whole.
    small = FeatureModel(2100, seed=3, clusters=200, block=1000)
    assert np.array_equal(small.rows(995, 2005), small.rows(0, 2100)[995:2005])
    assert np.array_equal(small.rows(0, 2100), np.concatenate([x for _, x in small.chunks(chunk=333)]))
    # Another model object with the same seed gives the same vectors; another seed does not.
    assert np.array_equal(FeatureModel(N, seed=3, clusters=200).rows(100, 200), whole[100:200])
    assert not np.allclose(FeatureModel(N, seed=4, clusters=200).rows(100, 200), whole[100:200])


def test_write_npy_matches_the_stream(tmp_path, model: FeatureModel) -> None:
    small = FeatureModel(1500, seed=3, clusters=200, block=1000)
    mm = small.write_npy(tmp_path / "f.npy", chunk=400)
    assert isinstance(mm, np.memmap) and mm.shape == (1500, 1024)
    assert np.array_equal(np.asarray(mm), small.rows(0, 1500))
    assert not (tmp_path / "f.partial.npy").exists()


def test_narrow_cone_like_clip_images(stats: dict) -> None:
    # Unrelated images: cosine ~0.3-0.6 (uniform random 1024-d vectors: ~0 +- 0.03).
    pc = stats["pairwise_cosine"]
    assert 0.25 <= pc["p5"] and pc["p95"] <= 0.7 and 0.4 <= pc["p50"] <= 0.55
    assert stats["mean_vector_norm"] > 0.6


def test_low_intrinsic_dimension_and_near_neighbours(stats: dict) -> None:
    assert stats["pca_dims_for_90pct_variance"] <= 80  # of 1024
    # The 10th neighbour is clearly nearer than a random point (uniform vectors: ratio ~1).
    assert stats["nn10_over_random_distance"] < 0.8
    assert stats["nn10_cosine"]["p50"] > stats["pairwise_cosine"]["p95"]


def test_clusters_are_uneven_and_near_duplicates_are_dense(model: FeatureModel) -> None:
    clusters = model.clusters_of(0, N)
    sizes = np.sort(np.bincount(clusters, minlength=200))[::-1]
    assert sizes[:20].sum() > 3 * sizes[-100:].sum()  # a few large clusters, a long tail
    x = model.rows(0, N)
    s = x @ x.T
    np.fill_diagonal(s, -1)
    best = s.max(1)
    # ~dup_fraction of the images have a near-duplicate (cosine > 0.95) among the others.
    share = float((best > 0.95).mean())
    assert 0.02 < share < 0.1


def test_text_queries_sit_apart_from_images(model: FeatureModel, stats: dict) -> None:
    q = model.queries(300)
    assert q.shape == (300, 1024) and np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(q, model.queries(300))
    # Modality gap: a text's best image is only ~0.3-0.5 (image neighbours ~0.8), random ~0.1.
    top1 = stats["text_image_top1_cosine"]
    assert 0.2 <= top1["p5"] and top1["p95"] <= 0.6
    assert stats["text_image_random_cosine"]["p50"] < 0.2
    assert stats["image_mean_vs_text_mean_cosine"] < 0.5
    # But a text still finds its own cluster: queries are not noise.
    assert top1["p50"] > stats["text_image_random_cosine"]["p95"]


def test_uniform_vectors_have_none_of_it() -> None:
    u = uniform_stats(2000)
    assert abs(u["pairwise_cosine"]["p50"]) < 0.05
    assert u["nn10_over_random_distance"] > 0.9
    assert u["pca_dims_for_90pct_variance"] > 500
