"""Recall@1/5/10 with Chinese-CLIP's exact semantics (and its own script as the oracle)."""

from __future__ import annotations

import json
import runpy
import sys
from unittest import mock

import numpy as np
import pytest

from datasets.formats import write_features_jsonl, write_predictions_jsonl, write_texts_jsonl
from operations.evaluation.knn import predict_files
from operations.evaluation.recall import evaluate


def others(exclude, n=10, start=500):
    return [i for i in range(start, start + n + len(exclude)) if i not in exclude][:n]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def hand_made(tmp_path):
    texts = [(1, "a", [11]), (2, "b", [21, 22]), (3, "c", [31]), (4, "d", [41]), (5, "e", [])]
    write_texts_jsonl(tmp_path / "texts.jsonl", texts)
    preds = {
        1: [11] + others([11], 9),  # hit @1
        2: others([], 3) + [22] + others([22], 6, 700),  # hit @5 (rank 4)
        3: others([], 7) + [31] + others([31], 2, 800),  # hit @10 (rank 8)
        4: others([41], 10),  # miss
        5: others([], 10),  # no ground truth: a miss
    }
    write_predictions_jsonl(tmp_path / "pred.jsonl", preds)
    return tmp_path


def test_hand_made_recall(hand_made):
    result = evaluate(hand_made / "texts.jsonl", hand_made / "pred.jsonl")
    assert result["success"] is True
    sj = result["scoreJson"]
    assert (
        sj["r1"] == pytest.approx(20.0)
        and sj["r5"] == pytest.approx(40.0)
        and sj["r10"] == pytest.approx(60.0)
    )
    assert sj["mean_recall"] == pytest.approx(40.0) and result["score"] == pytest.approx(40.0)
    assert set(sj) == {"score", "mean_recall", "r1", "r5", "r10"}


def run_script(module: str, *args) -> None:
    """Run cn_clip's script as `python -m module args` does, in this process: the scripts only
    read and write the files they are given."""
    with mock.patch.object(sys, "argv", [module, *map(str, args)]):
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def run_cn_clip(module, ref, pred, out):
    run_script(module, ref, pred, out)
    return json.loads(out.read_text())


def test_equals_cn_clip_evaluation_script(hand_made):
    ours = evaluate(hand_made / "texts.jsonl", hand_made / "pred.jsonl")
    theirs = run_cn_clip(
        "cn_clip.eval.evaluation", hand_made / "texts.jsonl", hand_made / "pred.jsonl", hand_made / "out.json"
    )
    assert ours == theirs


@pytest.mark.parametrize(
    "bad_line,fragment",
    [
        ({"text_id": 1, "image_ids": list(range(9))}, "wrong number of predicted image_ids"),
        ({"text_id": 1, "image_ids": [1] * 10}, "duplicate topk images"),
        ({"text_id": 1, "image_ids": ["1"] + list(range(2, 11))}, "invalid predicted image_id"),
        ({"text_id": 1, "image_ids": 5}, "is not a list"),
        ({"image_ids": list(range(10))}, "not containing text_id"),
        ({"text_id": 1}, "not containing the predicted image_ids"),
    ],
)
def test_rejections_match_cn_clip(hand_made, bad_line, fragment):
    pred = hand_made / "pred.jsonl"
    lines = pred.read_text().splitlines()
    lines[0] = json.dumps(bad_line)
    pred.write_text("\n".join(lines) + "\n")
    ours = evaluate(hand_made / "texts.jsonl", pred)
    theirs = run_cn_clip("cn_clip.eval.evaluation", hand_made / "texts.jsonl", pred, hand_made / "out.json")
    assert ours["success"] is False and fragment in ours["errorMsg"]
    assert ours == theirs


def test_missing_query_rejected(hand_made):
    pred = hand_made / "pred.jsonl"
    pred.write_text("\n".join(pred.read_text().splitlines()[:-1]) + "\n")
    result = evaluate(hand_made / "texts.jsonl", pred)
    assert (
        result["success"] is False
        and "have no prediction" in result["errorMsg"]
        and "5" in result["errorMsg"]
    )


def test_random_features_both_directions_equal_cn_clip(tmp_path):
    rng = np.random.default_rng(5)
    n_img, n_txt, d = 60, 45, 12
    img = rng.standard_normal((n_img, d)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    gt = rng.integers(0, n_img, size=n_txt)
    txt = img[gt] + 0.9 * rng.standard_normal((n_txt, d)).astype(np.float32)  # noisy: recall < 100
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    img_ids, txt_ids = np.arange(1000, 1000 + n_img), np.arange(1, n_txt + 1)
    write_texts_jsonl(
        tmp_path / "valid_texts.jsonl",
        [(int(t), f"t{t}", [int(img_ids[g])]) for t, g in zip(txt_ids, gt, strict=True)],
    )
    write_features_jsonl(tmp_path / "i.jsonl", "image_id", img_ids, img)
    write_features_jsonl(tmp_path / "t.jsonl", "text_id", txt_ids, txt)
    predict_files(tmp_path / "i.jsonl", tmp_path / "t.jsonl", tmp_path / "p.jsonl", k=10)
    ours = evaluate(tmp_path / "valid_texts.jsonl", tmp_path / "p.jsonl")
    theirs = run_cn_clip(
        "cn_clip.eval.evaluation", tmp_path / "valid_texts.jsonl", tmp_path / "p.jsonl", tmp_path / "o.json"
    )
    assert ours == theirs and 0 < ours["scoreJson"]["r1"] < 100
    # Image -> text: reference built by cn_clip's own transform script, scored by evaluation_tr.
    run_script("cn_clip.eval.transform_ir_annotation_to_tr", "--input", tmp_path / "valid_texts.jsonl")
    tr_ref = tmp_path / "valid_texts.tr.jsonl"
    predict_files(tmp_path / "i.jsonl", tmp_path / "t.jsonl", tmp_path / "tr.jsonl", k=10, direction="i2t")
    # evaluation_tr scores only images that have texts; predict for exactly those.
    ref_ids = {json.loads(x)["image_id"] for x in tr_ref.read_text().splitlines()}
    kept = [
        x for x in (tmp_path / "tr.jsonl").read_text().splitlines() if json.loads(x)["image_id"] in ref_ids
    ]
    (tmp_path / "tr.jsonl").write_text("\n".join(kept) + "\n")
    ours_tr = evaluate(tmp_path / "valid_texts.jsonl", tmp_path / "tr.jsonl", direction="i2t")
    theirs_tr = run_cn_clip("cn_clip.eval.evaluation_tr", tr_ref, tmp_path / "tr.jsonl", tmp_path / "o2.json")
    assert ours_tr == theirs_tr and ours_tr["success"] and 0 < ours_tr["scoreJson"]["r10"] <= 100
