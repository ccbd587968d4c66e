"""Recall@1/5/10 exactly as Chinese-CLIP's `eval/evaluation.py` computes it.

Semantics copied from that script (and `evaluation_tr.py` for image->text):
the reference maps each query to its ground-truth ids (a later line for the
same query overwrites an earlier one); every prediction line must hold an
int query id and a list of exactly 10 unique int ids; every reference query
needs a prediction; a query is a hit at k when any ground-truth id is in the
top k; every reference query counts (one without ground truth is a miss).
The result has the JSON shape the script writes: `{"success": true,
"score": ..., "scoreJson": {"score", "mean_recall", "r1", "r5", "r10"}}`
(percentages), or `{"success": false, "errorDetail", "errorMsg", "score": 0,
"scoreJson": {}}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from datasets.formats import PathLike

NUM_K = 10


class EvaluationError(ValueError):
    """The predictions cannot be scored (same conditions as cn_clip's script)."""


def read_t2i_reference(texts_jsonl: PathLike) -> dict[int, list[int]]:
    """text_id -> ground-truth image ids, from `${split}_texts.jsonl` (as cn_clip reads it)."""
    reference: dict[int, list[int]] = {}
    with open(texts_jsonl, encoding="utf-8") as fin:
        for line in fin:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            reference[obj["text_id"]] = obj["image_ids"]
    return reference


def read_i2t_reference(texts_jsonl: PathLike) -> dict[int, list[int]]:
    """image_id -> text ids, built as cn_clip's transform_ir_annotation_to_tr.py builds it."""
    reference: dict[int, list[int]] = {}
    with open(texts_jsonl, encoding="utf-8") as fin:
        for line in fin:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            for image_id in obj["image_ids"]:
                reference.setdefault(image_id, []).append(obj["text_id"])
    return reference


def read_submission(
    path: PathLike,
    reference: Mapping[int, Sequence[int]],
    k: int = NUM_K,
    query_key: str = "text_id",
    result_key: str = "image_ids",
) -> dict[int, list[int]]:
    """Read and validate a predictions file with the checks and messages of cn_clip's script."""
    q_name = query_key.capitalize()
    item = result_key[:-4]  # "image" / "text"
    if not os.path.exists(path):
        raise EvaluationError("The submission file is not found!")
    submission: dict[int, list[int]] = {}
    with open(path, encoding="utf-8") as fin:
        for line in fin:
            line = line.strip()
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # cn_clip: a bare except
                raise EvaluationError(f"Cannot parse this line into json object: {line}") from None
            if not isinstance(obj, dict) or query_key not in obj:
                raise EvaluationError(f"There exists one line not containing {query_key}: {line}")
            qid = obj[query_key]
            if not isinstance(qid, int):
                raise EvaluationError(
                    f"Found an invalid {query_key} {qid}, it should be an integer "
                    "(not string), please check your schema"
                )
            if result_key not in obj:
                raise EvaluationError(
                    f"There exists one line not containing the predicted {result_key}: {line}"
                )
            ids = obj[result_key]
            submission_check(qid, ids, k, q_name, item, result_key)
            submission[qid] = ids
    missing = set(reference) - set(submission)
    if missing:
        raise EvaluationError(
            f"The following {query_key}s have no prediction in your submission, "
            f"please check again: {', '.join(str(i) for i in missing)}"
        )
    return submission


def submission_check(
    qid: int, ids: object, k: int, q_name: str = "Text_id", item: str = "image", result_key: str = "image_ids"
) -> None:
    if not isinstance(ids, list):
        raise EvaluationError(
            f"The {result_key} field of {q_name.lower()} {qid} is not a list, please check your schema"
        )
    if len(ids) != k:
        raise EvaluationError(
            f"{q_name} {qid} has wrong number of predicted {result_key}! Require {k}, but {len(ids)} founded."
        )
    for rank, i in enumerate(ids):
        if not isinstance(i, int):
            raise EvaluationError(
                f"{q_name} {qid} has an invalid predicted {item}_id {i} at rank "
                f"{rank + 1}, it should be an integer (not string), please check your schema"
            )
    if len(set(ids)) != k:
        raise EvaluationError(
            f"{q_name} {qid} has duplicate topk {item}s in your prediction. Pleace check again!"
        )


def recall_scores(
    reference: Mapping[int, Sequence[int]], predictions: Mapping[int, Sequence[int]]
) -> tuple[float, float, float]:
    """(r1, r5, r10) as fractions; every reference query counts."""
    if not reference:
        raise EvaluationError("The reference holds no queries")
    r1 = r5 = r10 = 0
    for qid, truth in reference.items():
        relevant = set(truth)
        top = predictions[qid]
        r1 += any(i in top[:1] for i in relevant)
        r5 += any(i in top[:5] for i in relevant)
        r10 += any(i in top[:10] for i in relevant)
    n = len(reference)
    return r1 / n, r5 / n, r10 / n


def score_json(r1: float, r5: float, r10: float) -> dict:
    """cn_clip's `report_score` dict (percentages)."""
    mean_recall = (r1 + r5 + r10) / 3.0
    return {
        "success": True,
        "score": mean_recall * 100,
        "scoreJson": {
            "score": mean_recall * 100,
            "mean_recall": mean_recall * 100,
            "r1": r1 * 100,
            "r5": r5 * 100,
            "r10": r10 * 100,
        },
    }


def error_json(message: str) -> dict:
    """cn_clip's `report_error_msg` dict."""
    return {"errorDetail": message, "errorMsg": message, "score": 0, "scoreJson": {}, "success": False}


def evaluate(texts_jsonl: PathLike, predictions: PathLike, direction: str = "t2i") -> dict:
    """Score a predictions file against `${split}_texts.jsonl`; never raises on bad input.

    direction "t2i": predictions `{"text_id", "image_ids"}` (evaluation.py);
    "i2t": predictions `{"image_id", "text_ids"}` (evaluation_tr.py, with the
    reference derived from the texts file as transform_ir_annotation_to_tr.py does).
    """
    try:
        if direction == "t2i":
            reference = read_t2i_reference(texts_jsonl)
            submission = read_submission(predictions, reference, NUM_K, "text_id", "image_ids")
        elif direction == "i2t":
            reference = read_i2t_reference(texts_jsonl)
            submission = read_submission(predictions, reference, NUM_K, "image_id", "text_ids")
        else:
            raise EvaluationError("direction must be 't2i' or 'i2t'")
        return score_json(*recall_scores(reference, submission))
    except (EvaluationError, OSError, ValueError, KeyError, TypeError) as exc:
        message = exc.args[0] if exc.args else repr(exc)
        if isinstance(exc, KeyError):
            message = f"reference line without field {message!r}"
        return error_json(str(message))
