"""Exact predictions vs predictions through Milvus Lite (FLAT), and the cross-check itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.formats import (
    read_predictions,
    write_features_jsonl,
    write_predictions_jsonl,
    write_texts_jsonl,
)
from operations.domain import IndexSpec
from operations.evaluation import cli
from operations.evaluation.crosscheck import crosscheck, feature_scorer
from operations.evaluation.knn import exact_topk, predict_files
from operations.evaluation.recall import evaluate
from operations.evaluation.store_predict import load_features_into_store, predict_via_store
from operations.stores.memory_vector_store import InMemoryVectorStore
from operations.stores.milvus_store import MilvusVectorStore


def normalised(rng, n, d):
    m = rng.standard_normal((n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("xc")
    rng = np.random.default_rng(11)
    img, txt = normalised(rng, 400, 32), normalised(rng, 80, 32)
    img_ids, txt_ids = np.arange(5000, 5400), np.arange(1, 81)
    write_features_jsonl(d / "valid_imgs.img_feat.jsonl", "image_id", img_ids, img)
    write_features_jsonl(d / "valid_texts.txt_feat.jsonl", "text_id", txt_ids, txt)
    write_texts_jsonl(
        d / "valid_texts.jsonl", [(int(t), f"t{t}", [int(img_ids[(3 * t) % 400])]) for t in txt_ids]
    )
    predict_files(
        d / "valid_imgs.img_feat.jsonl", d / "valid_texts.txt_feat.jsonl", d / "valid_predictions.jsonl"
    )
    return d, img_ids, img, txt_ids, txt


def test_milvus_lite_flat_agrees_with_exact(data, tmp_path):
    d, _, _, txt_ids, txt = data
    store = MilvusVectorStore(str(tmp_path / "m.db"), timeout_s=60)
    try:
        summary = load_features_into_store(
            store, "eval_valid", d / "valid_imgs.img_feat.jsonl", "rand", IndexSpec("FLAT"), batch_size=150
        )
        assert summary["upserted"] == 400 and summary["dim"] == 32
        via_store = predict_via_store(store, "eval_valid", txt, 10, txt_ids, batch_size=32)
    finally:
        store.close()
    exact = read_predictions(d / "valid_predictions.jsonl")
    store_map = {q: (ids, scores) for q, ids, scores in via_store.items()}
    result = crosscheck(exact, store_map)
    assert result["queries"] == 80 and result["only_in_a"] == result["only_in_b"] == 0
    assert result["tie_aware_agreement"] == 1.0 and result["mean_overlap@10"] == 1.0
    assert result["disagreements"] == 0 and result["scores_available"]


def test_cli_via_store_and_files(data, tmp_path, capsys):
    d = data[0]
    out = tmp_path / "store_preds.jsonl"
    rc = cli.main(
        [
            "predict",
            "--via-store",
            "--milvus-uri",
            str(tmp_path / "cli.db"),
            "--load",
            "--recreate",
            "--dataset-dir",
            str(d),
            "--split",
            "valid",
            "--collection",
            "eval_cli",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["load"]["upserted"] == 400 and summary["predict"]["queries"] == 80
    rc = cli.main(
        [
            "crosscheck",
            "--dataset-dir",
            str(d),
            "--rescore",
            "--min-agreement",
            "1.0",
            str(d / "valid_predictions.jsonl"),
            str(out),
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["tie_aware_agreement"] == 1.0
    # The same recall through either path.
    assert evaluate(d / "valid_texts.jsonl", out) == evaluate(
        d / "valid_texts.jsonl", d / "valid_predictions.jsonl"
    )


def perturbed(exact, rng):
    """Swap ranks 0 and 5 in a quarter of the queries (scores travel with their ids)."""
    out = {}
    for q, rec in exact.items():
        ids, scores = list(rec.ids), list(rec.scores)
        if rng.random() < 0.25:
            ids[0], ids[5] = ids[5], ids[0]
            scores[0], scores[5] = scores[5], scores[0]
        out[q] = (ids, scores)
    return out


def test_perturbed_predictions_report_less_than_full_agreement(data):
    d, img_ids, img, txt_ids, txt = data
    exact = read_predictions(d / "valid_predictions.jsonl")
    rng = np.random.default_rng(0)
    bad = perturbed(exact, rng)
    n_changed = sum(bad[q][0] != exact[q].ids for q in exact)
    assert n_changed > 0
    result = crosscheck(exact, bad)
    assert result["tie_aware_agreement"] == pytest.approx(1 - n_changed / 80)
    assert result["identical_order_fraction"] == pytest.approx(1 - n_changed / 80)
    assert result["mean_overlap@1"] < 1.0 and result["mean_overlap@10"] == 1.0
    assert result["examples"] and result["examples"][0]["query_id"] in exact
    # Lying scores (order changed, scores kept in place) are caught by rescoring.
    liar = {q: (ids, list(exact[q].scores)) for q, (ids, _) in bad.items()}
    assert crosscheck(exact, liar)["tie_aware_agreement"] < 1.0
    scorer = feature_scorer(txt_ids, txt, img_ids, img)
    assert crosscheck(exact, liar, rescore=scorer)["tie_aware_agreement"] == pytest.approx(1 - n_changed / 80)
    # An id replaced by one outside the top 10 lowers overlap@10.
    q0 = next(iter(exact))
    outsider = next(int(i) for i in img_ids if int(i) not in exact[q0].ids)
    replaced = {q: (list(r.ids), list(r.scores)) for q, r in exact.items()}
    replaced[q0][0][9] = outsider
    r = crosscheck(exact, replaced, rescore=scorer)
    assert r["mean_overlap@10"] < 1.0 and r["tie_aware_agreement"] < 1.0


def test_ties_in_different_order_count_as_agreement():
    a = {1: ([10, 11, 12, 13], [0.9, 0.5, 0.5, 0.1]), 2: ([1, 2], [0.7, 0.7])}
    b = {1: ([10, 12, 11, 13], [0.9, 0.5, 0.5, 0.1]), 2: ([2, 3], [0.7, 0.7])}  # 3 tied at the cut
    r = crosscheck(a, b)
    assert r["tie_aware_agreement"] == 1.0 and r["identical_order_fraction"] == 0.0
    c = {1: ([10, 12, 11, 13], [0.9, 0.5, 0.4, 0.1]), 2: ([2, 1], [0.7, 0.7])}  # 0.5 vs 0.4: not a tie
    r = crosscheck(a, c)
    assert r["tie_aware_agreement"] == 0.5 and r["disagreements"] == 1
    # Without scores only identical order agrees.
    assert crosscheck({1: [1, 2]}, {1: [2, 1]})["tie_aware_agreement"] == 0.0


def test_in_memory_store_equals_exact_with_ties():
    # The reference store orders ties by id, as exact_topk does: identical, not just tie-aware.
    rng = np.random.default_rng(2)
    x = rng.integers(-1, 2, size=(50, 4)).astype(np.float32)
    q = rng.integers(-1, 2, size=(10, 4)).astype(np.float32)
    ids = np.arange(50)[::-1].copy()
    store = InMemoryVectorStore()
    store.create_collection("c", 4, "m", IndexSpec())
    store.upsert("c", ids.tolist(), x)
    a = exact_topk(q, x, ids, 10)
    b = predict_via_store(store, "c", q, 10)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_crosscheck_files(tmp_path):
    write_predictions_jsonl(tmp_path / "a.jsonl", [(1, [1, 2], [0.5, 0.4]), (2, [3, 4], [0.3, 0.2])])
    write_predictions_jsonl(tmp_path / "b.jsonl", [(1, [1, 2], [0.5, 0.4]), (3, [3, 4], [0.3, 0.2])])
    r = crosscheck(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert r["queries"] == 1 and r["only_in_a"] == 1 and r["only_in_b"] == 1


@pytest.mark.services
def test_milvus_server_flat_agrees_with_exact(data, milvus_server):
    d, _, _, txt_ids, txt = data
    store = MilvusVectorStore(milvus_server.uri, timeout_s=60)
    try:
        load_features_into_store(
            store, "eval_xc_server", d / "valid_imgs.img_feat.jsonl", "rand", IndexSpec("FLAT"), recreate=True
        )
        via_store = predict_via_store(store, "eval_xc_server", txt, 10, txt_ids, batch_size=32)
        store.drop_collection("eval_xc_server")
    finally:
        store.close()
    exact = read_predictions(d / "valid_predictions.jsonl")
    result = crosscheck(exact, {q: (ids, scores) for q, ids, scores in via_store.items()})
    assert (
        result["queries"] == 80 and result["tie_aware_agreement"] == 1.0 and result["mean_overlap@10"] == 1.0
    )
