"""Vector arithmetic, the Platt fit, the reliability table, the cut and the calibration file."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from operations.errors import InvalidInput
from operations.relevance.calibration import Calibration, fit_platt, reliability
from operations.relevance.calibration_store import CalibrationBook
from operations.relevance.compose import QueryParts, Weights, closer_to_unwanted, compose
from operations.relevance.cutoff import CutOptions, apply_cut, auto_cut


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_weighted_terms_unwanted_terms_and_feedback_follow_the_rule():
    a, b, n = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    w = Weights(negative_term=0.5, feedback_positive=0.75, feedback_negative=0.25, image=1.0)
    q = compose(QueryParts(positives=[(a, 2.0), (b, 1.0)], negatives=[(n, 1.0)]), w)
    expected = unit(2, 1, 0) - 0.5 * n
    assert np.allclose(q, expected / np.linalg.norm(expected), atol=1e-6)
    q = compose(QueryParts(positives=[(a, 1.0)], feedback_positive=[b, b], feedback_negative=[n]), w)
    expected = a + 0.75 * b - 0.25 * n
    assert np.allclose(q, expected / np.linalg.norm(expected), atol=1e-6)
    # text plus image: the normalised text and the weighted image
    q = compose(QueryParts(positives=[(a, 3.0)], image=b), w)
    assert np.allclose(q, unit(1, 1, 0), atol=1e-6)
    # feedback alone: the mean of the examples is the anchor
    assert np.allclose(compose(QueryParts(feedback_positive=[a, b]), w), unit(1, 1, 0), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=1e-6)


def test_a_query_that_cancels_out_or_has_nothing_is_refused():
    a = unit(1, 0)
    with pytest.raises(InvalidInput, match="cancels out"):
        compose(QueryParts(positives=[(a, 1.0)], negatives=[(a, 1.0)]), Weights(negative_term=1.0))
    with pytest.raises(InvalidInput, match="nothing to search by"):
        compose(QueryParts(negatives=[(a, 1.0)]), Weights())


def test_results_closer_to_an_unwanted_term_are_marked():
    wanted, unwanted = unit(1, 0), unit(0, 1)
    cands = np.stack([unit(1, 0.2), unit(0.2, 1), unit(1, 1.01)])
    assert closer_to_unwanted(cands, wanted, [unwanted]).tolist() == [False, True, True]
    assert closer_to_unwanted(cands, wanted, []).tolist() == [False, False, False]


def test_platt_fit_recovers_a_known_curve_and_reliability_agrees():
    rng = np.random.default_rng(0)
    s = rng.uniform(-0.2, 1.0, 200_000)
    true = Calibration(12.0, -6.0, "m", None)
    y = rng.random(s.size) < true.relevance(s)
    a, b = fit_platt(s, y)
    assert a == pytest.approx(12.0, rel=0.05) and b == pytest.approx(-6.0, rel=0.05)
    bins, ece = reliability(Calibration(a, b, "m", None).relevance(s), y)
    assert ece < 0.01
    for bn in bins:
        if bn.pairs > 2000:
            assert abs(bn.predicted - bn.observed) < 0.03
    # a random predictor is far off on the same data
    _, ece_bad = reliability(rng.random(s.size), y)
    assert ece_bad > 5 * ece


def test_platt_refuses_one_class_and_decreasing_data():
    with pytest.raises(ValueError):
        fit_platt(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="do not rise"):
        fit_platt(np.linspace(0, 1, 1000), np.linspace(0, 1, 1000) < 0.5)


def test_relevance_is_increasing_and_inverts():
    cal = Calibration(30.0, -25.0, "m", None)
    r = cal.relevance([0.5, 0.8, 0.9])
    assert np.all(np.diff(r) > 0)
    assert cal.score_for(float(r[1])) == pytest.approx(0.8)


@dataclass
class Row:
    id: int
    created_at: int


@dataclass
class M:
    rank: int
    score: float
    row: Row


def matches(scores, dates):
    return [M(i + 1, s, Row(100 + i, d)) for i, (s, d) in enumerate(zip(scores, dates, strict=True))]


def test_auto_cut_stops_at_the_largest_drop():
    assert auto_cut([0.9, 0.88, 0.85, 0.5, 0.48]) == 3
    assert auto_cut([0.9]) == 1 and auto_cut([]) == 0


def test_threshold_cut_and_order_by_date():
    cal = Calibration(30.0, -25.0, "m", None)
    ms = matches([0.95, 0.9, 0.86, 0.6, 0.58], [5, 1, 9, 3, 7])
    kept, report = apply_cut(ms, CutOptions(min_relevance=0.5), cal, "")
    rel = cal.relevance([0.95, 0.9, 0.86])
    assert [m.row.id for m in kept] == [100, 101, 102] and all(r >= 0.5 for r in rel)
    assert report.candidates == 5 and report.kept_by_threshold == 3
    assert report.tier(100) == "relevant"
    ms = matches([0.95, 0.9, 0.86, 0.6, 0.58], [5, 1, 9, 3, 7])
    kept, report = apply_cut(ms, CutOptions(cut="auto", order_by="created_at", order="desc"), cal, "")
    assert report.auto_cut_at == 3
    assert [m.row.created_at for m in kept] == [9, 5, 1] and [m.rank for m in kept] == [1, 2, 3]
    ms = matches([0.95, 0.9, 0.86], [5, 1, 9])
    kept, _ = apply_cut(ms, CutOptions(order_by="created_at", order="asc"), cal, "")
    assert [m.row.created_at for m in kept] == [1, 5, 9]


def test_auto_cut_follows_the_fused_score_when_results_were_fused():
    ms = matches([0.2, 0.9, 0.1, 0.8], [1, 2, 3, 4])
    for m, fused in zip(ms, [0.033, 0.032, 0.016, 0.015], strict=True):
        m.fused = fused  # type: ignore[attr-defined]
    kept, report = apply_cut(ms, CutOptions(cut="auto"), None, "")
    assert report.auto_cut_at == 2 and [m.row.id for m in kept] == [100, 101]


def test_uncalibrated_gives_null_relevance_and_refuses_a_threshold():
    ms = matches([0.9, 0.5], [1, 2])
    kept, report = apply_cut(ms, CutOptions(cut="auto"), None, "model 'x' is not calibrated")
    assert not report.calibrated and report.relevance == {100: None}
    assert report.tier(100) is None and len(kept) == 1
    with pytest.raises(InvalidInput, match="not calibrated"):
        apply_cut(matches([0.9], [1]), CutOptions(min_relevance=0.2), None, "model 'x' is not calibrated")


def test_calibration_file_is_tied_to_the_checkpoint(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights v1")
    book = CalibrationBook({"m": ckpt, "rand": None})
    assert book.get("m").calibration is None and "not calibrated" in book.get("m").reason
    assert book.get("rand").calibration is None and book.get("other").calibration is None
    cal = Calibration(10.0, -5.0, "m", book.checkpoint_sha256("m"), {"split": "valid"})
    path = book.save(cal)
    assert path == tmp_path / "m.calibration.json"
    assert book.get("m").calibration == cal
    ckpt.write_bytes(b"weights v2, retrained")  # other weights: the old fit is not applied
    state = CalibrationBook({"m": ckpt}).get("m")
    assert state.calibration is None and "other weights" in state.reason
    path.write_text(json.dumps({**cal.to_json(), "a": -1}))
    assert "unreadable" in CalibrationBook({"m": ckpt}).get("m").reason
