"""Compare two prediction sets (e.g. exact KNN vs the vector store).

Per query: overlap@k (|A[:k] & B[:k]| / k) for k in 1, 5, 10; whether the
ranked lists are identical; and tie-aware agreement, which counts a
different order among equal scores (|diff| < tie_eps) as agreement. Ties
need scores: our prediction files carry an optional `scores` list. Without
scores on both sides, tie-aware agreement falls back to identical order.

Tie-aware agreement of lists A and B (same length) holds when, rank by
rank, their scores agree within `tie_eps` and every id in both lists got the
same score (within `tie_eps`) on both sides. Where the ids differ at a rank
the scores are equal there, so the difference is only the order of tied
items or which of several tied items made the cut at rank k.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from datasets.formats import PathLike, PredictionRecord, read_predictions

OVERLAP_KS = (1, 5, 10)


@dataclass(frozen=True)
class Ranked:
    ids: Sequence[int]
    scores: Sequence[float] | None = None


def _as_map(preds: PathLike | Mapping, query_key: str, result_key: str) -> dict[int, Ranked]:
    if not isinstance(preds, Mapping):
        preds = read_predictions(preds, query_key, result_key)
    out: dict[int, Ranked] = {}
    for qid, value in preds.items():
        if isinstance(value, PredictionRecord):
            out[int(qid)] = Ranked(value.ids, value.scores)
        elif isinstance(value, Ranked):
            out[int(qid)] = value
        elif isinstance(value, tuple) and len(value) == 2:
            out[int(qid)] = Ranked(list(value[0]), None if value[1] is None else list(value[1]))
        else:
            out[int(qid)] = Ranked(list(value))
    return out


def tie_aware_equal(a: Ranked, b: Ranked, tie_eps: float = 1e-6) -> bool:
    """True when A and B differ at most by the order/choice among equal scores."""
    if list(a.ids) == list(b.ids):
        return True
    if a.scores is None or b.scores is None or len(a.ids) != len(b.ids):
        return False
    if any(abs(x - y) >= tie_eps for x, y in zip(a.scores, b.scores, strict=True)):
        return False
    score_a = dict(zip(a.ids, a.scores, strict=True))
    return all(abs(score_a[i] - s) < tie_eps for i, s in zip(b.ids, b.scores, strict=True) if i in score_a)


def compare_one(a: Ranked, b: Ranked, tie_eps: float = 1e-6) -> dict:
    """Metrics of one query; overlap@k uses the k both lists can offer."""
    out = {}
    for k in OVERLAP_KS:
        kk = min(k, len(a.ids), len(b.ids))
        out[f"overlap@{k}"] = len(set(a.ids[:kk]) & set(b.ids[:kk])) / kk if kk else 1.0
    out["identical"] = list(a.ids) == list(b.ids)
    out["tie_aware"] = tie_aware_equal(a, b, tie_eps)
    return out


Scorer = Callable[[int, Sequence[int]], Sequence[float]]


def feature_scorer(
    query_ids: np.ndarray, query_feats: np.ndarray, item_ids: np.ndarray, item_feats: np.ndarray
) -> Scorer:
    """A scorer giving the true inner product of (query, item) from feature matrices.

    With it the cross-check does not trust the scores written in either file.
    """
    q_pos = {int(q): i for i, q in enumerate(query_ids)}
    i_pos = {int(t): i for i, t in enumerate(item_ids)}

    def score(qid: int, ids: Sequence[int]) -> list[float]:
        rows = item_feats[[i_pos[int(i)] for i in ids]]
        return (rows @ query_feats[q_pos[int(qid)]]).astype(np.float64).tolist()

    return score


def crosscheck(
    a: PathLike | Mapping,
    b: PathLike | Mapping,
    tie_eps: float = 1e-6,
    query_key: str = "text_id",
    result_key: str = "image_ids",
    max_examples: int = 5,
    rescore: Scorer | None = None,
) -> dict:
    """Summary of how far prediction set `b` agrees with reference set `a`.

    Each side is a predictions file or a mapping query id -> ids,
    (ids, scores), Ranked or PredictionRecord. Fractions are over the
    queries both sides answer; missing queries are counted separately.
    `rescore` (see `feature_scorer`) replaces both sides' scores by true ones.
    """
    pa, pb = _as_map(a, query_key, result_key), _as_map(b, query_key, result_key)
    if rescore is not None:
        pa = {q: Ranked(r.ids, list(rescore(q, r.ids))) for q, r in pa.items()}
        pb = {q: Ranked(r.ids, list(rescore(q, r.ids))) for q, r in pb.items()}
    common = sorted(set(pa) & set(pb))
    sums = {f"overlap@{k}": 0.0 for k in OVERLAP_KS}
    identical = tie_aware = 0
    examples: list[dict] = []
    for qid in common:
        m = compare_one(pa[qid], pb[qid], tie_eps)
        for key in sums:
            sums[key] += m[key]
        identical += m["identical"]
        tie_aware += m["tie_aware"]
        if not m["tie_aware"] and len(examples) < max_examples:
            examples.append(
                {
                    "query_id": qid,
                    "a": list(pa[qid].ids),
                    "b": list(pb[qid].ids),
                    "a_scores": pa[qid].scores,
                    "b_scores": pb[qid].scores,
                }
            )
    n = len(common)
    return {
        "queries": n,
        "only_in_a": len(set(pa) - set(pb)),
        "only_in_b": len(set(pb) - set(pa)),
        **{f"mean_{key}": (v / n if n else None) for key, v in sums.items()},
        "identical_order_fraction": identical / n if n else None,
        "tie_aware_agreement": tie_aware / n if n else None,
        "scores_available": bool(n)
        and all(pa[q].scores is not None and pb[q].scores is not None for q in common),
        "tie_eps": tie_eps,
        "rescored": rescore is not None,
        "disagreements": n - tie_aware,
        "examples": examples,
    }
