"""Relevance of results, the cut-off (`min_relevance`, `cut: "auto"`) and their order.

Applied after the vector search to the ranked candidates (at most top_k), in this order:
1. relevance: the model's calibration applied to each result's basis score (the plain score of
   a text query; for a composed query the similarity to its positive text, see `compose`);
   None for every result when the model is uncalibrated or the query has no text;
2. `min_relevance`: drop results below it (refused when there is no relevance to compare);
3. `cut: "auto"`: keep results up to the largest drop between consecutive scores;
4. `order_by`: "relevance" keeps the ranking, "created_at" sorts the survivors by date.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from operations.errors import InvalidInput
from operations.relevance.calibration import Calibration

OrderBy = Literal["relevance", "created_at"]
Direction = Literal["desc", "asc"]
# Tiers the web page groups results by (calibrated relevance, 0..1): 相关 and 可能相关.
RELEVANT_AT = 0.3
MAYBE_AT = 0.05


class _Ranked(Protocol):
    rank: int
    score: float
    row: object


@dataclass(frozen=True)
class CutOptions:
    """What a caller asked for: threshold, automatic cut and order."""

    min_relevance: float | None = None
    cut: Literal["none", "auto"] = "none"
    order_by: OrderBy = "relevance"
    order: Direction = "desc"

    def check(self) -> CutOptions:
        if self.min_relevance is not None and not 0.0 <= self.min_relevance <= 1.0:
            raise InvalidInput("min_relevance must be in 0..1")
        if self.cut not in ("none", "auto"):
            raise InvalidInput('cut must be "none" or "auto"')
        if self.order_by not in ("relevance", "created_at"):
            raise InvalidInput('order_by must be "relevance" or "created_at"')
        if self.order not in ("desc", "asc"):
            raise InvalidInput('order must be "desc" or "asc"')
        return self


@dataclass
class RelevanceReport:
    """What the cut did, and each kept result's relevance (by image id)."""

    calibrated: bool
    note: str
    relevance: dict[int, float | None] = field(default_factory=dict)
    candidates: int = 0
    kept_by_threshold: int = 0
    auto_cut_at: int | None = None  # results kept by the automatic cut

    def tier(self, image_id: int) -> str | None:
        """ "relevant", "maybe" or "other" by calibrated relevance; None when uncalibrated."""
        r = self.relevance.get(image_id)
        if r is None:
            return None
        return "relevant" if r >= RELEVANT_AT else "maybe" if r >= MAYBE_AT else "other"


def auto_cut(scores: Sequence[float]) -> int:
    """How many of the descending `scores` to keep: all up to the largest drop between two
    neighbours (ties: the first such drop). One or no score: all of them."""
    if len(scores) < 2:
        return len(scores)
    gaps = -np.diff(np.asarray(scores, dtype=np.float64))
    return int(np.argmax(gaps)) + 1


def _ranking_score(m: object) -> float:
    fused = getattr(m, "fused", None)
    return float(fused) if fused is not None else float(m.score)  # type: ignore[attr-defined]


def apply_cut(
    matches: list,
    options: CutOptions,
    calibration: Calibration | None,
    note: str,
    basis: dict[int, float] | None = None,
) -> tuple[list, RelevanceReport]:
    """The kept matches, re-ranked from 1, and the report. `matches` are ranked best first and
    carry `.score` and `.row` (with `.id` and `.created_at`); `basis` (image id -> score) replaces
    `.score` as what the calibration reads, for composed queries."""
    options.check()
    if calibration is None and options.min_relevance is not None:
        raise InvalidInput(f"min_relevance needs a calibrated model: {note}")
    report = RelevanceReport(calibration is not None, note, candidates=len(matches))
    if calibration is not None:
        raw = [basis.get(m.row.id, m.score) if basis is not None else m.score for m in matches]
        values: list[float] = calibration.relevance(raw).tolist() if raw else []
        report.relevance = {m.row.id: round(float(v), 6) for m, v in zip(matches, values, strict=False)}
    else:
        report.relevance = {m.row.id: None for m in matches}
    kept = list(matches)
    if options.min_relevance is not None:
        kept = [m for m in kept if (report.relevance[m.row.id] or 0.0) >= options.min_relevance]
    report.kept_by_threshold = len(kept)
    if options.cut == "auto":
        # The curve of what ranked the results: the fused rank score when text and image
        # rankings were fused (operations.fusion), else the cosine.
        report.auto_cut_at = auto_cut([_ranking_score(m) for m in kept])
        kept = kept[: report.auto_cut_at]
    if options.order_by == "created_at":
        # Stable: results of one date keep their relevance order.
        kept.sort(key=lambda m: m.row.created_at, reverse=options.order == "desc")
    elif options.order == "asc":
        kept.reverse()
    for rank, m in enumerate(kept, 1):
        m.rank = rank
    report.relevance = {m.row.id: report.relevance[m.row.id] for m in kept}
    return kept, report
