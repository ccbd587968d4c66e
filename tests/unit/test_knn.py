"""Exact chunked top-k against brute force, ties included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.formats import read_predictions, write_features_jsonl
from operations.evaluation.knn import exact_topk, load_feature_matrix, predict_files


def brute_force(q, x, ids, k):
    """Reference: full sort by (score desc, id asc), scores in float64."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    out_ids, out_scores = [], []
    for row in s:
        order = sorted(range(len(ids)), key=lambda j: (-row[j], ids[j]))[:k]
        out_ids.append([int(ids[j]) for j in order])
        out_scores.append([row[j] for j in order])
    return np.array(out_ids), np.array(out_scores)


def normalised(rng, n, d):
    m = rng.standard_normal((n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "seed,qc,ic,k", [(0, 7, 13, 10), (1, 1024, 8192, 10), (2, 3, 5, 10), (3, 16, 64, 1), (4, 5, 9, 37)]
)
def test_random_matches_brute_force(seed, qc, ic, k):
    rng = np.random.default_rng(seed)
    x, q = normalised(rng, 211, 24), normalised(rng, 41, 24)
    ids = rng.permutation(10_000)[:211] + 5
    got = exact_topk(q, x, ids, k, query_chunk=qc, index_chunk=ic)
    want_ids, want_scores = brute_force(q, x, ids, k)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_allclose(got.scores, want_scores, atol=1e-5)
    assert got.ids.shape == (41, k) and got.scores.dtype == np.float32


@pytest.mark.parametrize("qc,ic", [(4, 6), (50, 3), (1, 1000)])
def test_ties_broken_by_lower_id(qc, ic):
    # Small integers: every product is exact in float32, so ties are true ties.
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, size=(120, 6)).astype(np.float32)
    x[60:] = x[:60]  # every vector twice, under different ids
    q = rng.integers(-1, 2, size=(30, 6)).astype(np.float32)
    ids = rng.permutation(1000)[:120]
    got = exact_topk(q, x, ids, 10, query_chunk=qc, index_chunk=ic)
    want_ids, want_scores = brute_force(q, x, ids, 10)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_array_equal(got.scores, want_scores.astype(np.float32))
    # The data really has ties at the cut, or this test proves little.
    assert any((want_scores[:, 9] == want_scores[:, 10 - 2]).tolist())


def test_all_equal_scores_and_k_larger_than_index():
    x = np.ones((5, 3), np.float32)
    ids = np.array([9, 3, 7, 1, 5])
    got = exact_topk(np.ones((2, 3), np.float32), x, ids, 10, index_chunk=2)
    assert got.ids.tolist() == [[1, 3, 5, 7, 9]] * 2


def test_duplicate_index_ids_refused():
    with pytest.raises(ValueError, match="unique"):
        exact_topk(np.ones((1, 2)), np.ones((2, 2)), np.array([1, 1]), 1)


def test_predict_files(tmp_path):
    rng = np.random.default_rng(3)
    x, q = normalised(rng, 50, 8), normalised(rng, 12, 8)
    img_ids, txt_ids = np.arange(100, 150), np.arange(1, 13)
    write_features_jsonl(tmp_path / "i.jsonl", "image_id", img_ids, x)
    write_features_jsonl(tmp_path / "t.jsonl", "text_id", txt_ids, q)
    with open(tmp_path / "t.jsonl", "a") as f:  # a broken query line is skipped, not fatal
        f.write(json.dumps({"text_id": 99, "feature": [0.1] * 3}) + "\n")
    summary = predict_files(
        tmp_path / "i.jsonl", tmp_path / "t.jsonl", tmp_path / "p.jsonl", k=10, query_chunk=5, index_chunk=16
    )
    assert summary["queries"] == 12 and summary["bad_query_records"] == 1
    preds = read_predictions(tmp_path / "p.jsonl")
    want_ids, want_scores = brute_force(q, x, img_ids, 10)
    assert [preds[t].ids for t in txt_ids.tolist()] == want_ids.tolist()
    np.testing.assert_allclose([preds[t].scores for t in txt_ids.tolist()], want_scores, atol=1e-5)
    # Image -> text, as make_topk_predictions_tr.py.
    predict_files(tmp_path / "i.jsonl", tmp_path / "t.jsonl", tmp_path / "tr.jsonl", k=5, direction="i2t")
    tr = read_predictions(tmp_path / "tr.jsonl", "image_id", "text_ids")
    want_tr, _ = brute_force(x, q, txt_ids, 5)
    assert [tr[i].ids for i in img_ids.tolist()] == want_tr.tolist()


def test_load_feature_matrix_skips_bad(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text(
        '{"image_id": 1, "feature": [1, 0]}\n{"image_id": 2, "feature": [1, 0, 0]}\n'
        '{"image_id": 3, "feature": [0, 1]}\n'
    )
    ids, m, bad = load_feature_matrix(p, "image_id")
    assert ids.tolist() == [1, 3] and m.shape == (2, 2) and [b.line_no for b in bad] == [2]
