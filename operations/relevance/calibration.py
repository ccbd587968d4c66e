"""A monotone map from a model's raw cosine score to the probability that an image matches a query.

Method: Platt scaling, p = 1 / (1 + exp(-(a * score + b))), fitted by maximum likelihood with
Platt's smoothed targets. Chosen over isotonic regression because
- it has two parameters, so a labelled split of a few thousand captions pins it down, where
  isotonic regression needs many positives in every score range to avoid steps fitted to noise;
- it is strictly increasing, so relevance never reorders results and a `min_relevance`
  threshold maps to exactly one raw score (isotonic plateaus tie scores and make thresholds
  jump);
- it extrapolates sanely beyond the scores seen in the split (isotonic stays flat).
The reliability diagram (`reliability`) on a held-out split shows how well the curve fits.

Pure numpy; reading splits and storing fits live in `calibration_store` and `calibrate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

METHOD = "platt"
_NEWTON_STEPS = 100


@dataclass(frozen=True)
class Calibration:
    """Platt parameters of one model, and what they were fitted on."""

    a: float
    b: float
    model_name: str
    # The checkpoint's sha256: a fit belongs to the exact weights it was measured on.
    checkpoint_sha256: str | None
    fitted_on: dict = field(default_factory=dict)
    method: str = METHOD

    def relevance(self, scores: np.ndarray | list[float]) -> np.ndarray:
        """Estimated match probability of each raw score, in 0..1."""
        z = self.a * np.asarray(scores, dtype=np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def score_for(self, relevance: float) -> float:
        """The raw score whose relevance is `relevance` (0 < relevance < 1): the inverse map."""
        return float((np.log(relevance / (1.0 - relevance)) - self.b) / self.a)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        if data.get("method") != METHOD:
            raise ValueError(f"unknown calibration method {data.get('method')!r}")
        a, b = float(data["a"]), float(data["b"])
        if not (np.isfinite(a) and np.isfinite(b) and a > 0):
            raise ValueError("calibration parameters must be finite with a > 0 (increasing)")
        return cls(
            a=a,
            b=b,
            model_name=str(data["model_name"]),
            checkpoint_sha256=data.get("checkpoint_sha256"),
            fitted_on=dict(data.get("fitted_on") or {}),
        )


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of the logistic curve that best explains `labels` (0/1) from `scores`.

    Newton's method on the log-loss with Platt's targets (N+ + 1)/(N+ + 2) and 1/(N- + 2),
    which keep the fit finite when the classes separate.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape or s.size == 0:
        raise ValueError("scores and labels must be non-empty and of one length")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("calibration needs both matching and non-matching pairs")
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    # Start from the logistic line through the class means.
    a, b = 1.0, float(np.log((n_pos + 1.0) / (n_neg + 1.0)))
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * s + b, -500, 500)))
        w = np.maximum(p * (1 - p), 1e-12)
        g_a, g_b = float(np.dot(p - t, s)), float(np.sum(p - t))
        h_aa, h_ab, h_bb = float(np.dot(w, s * s)), float(np.dot(w, s)), float(np.sum(w))
        det = h_aa * h_bb - h_ab * h_ab
        if det <= 0:
            break
        da = (h_bb * g_a - h_ab * g_b) / det
        db = (h_aa * g_b - h_ab * g_a) / det
        a, b = a - da, b - db
        if abs(da) < 1e-10 and abs(db) < 1e-10:
            break
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
        raise ValueError("the split's scores do not rise with matching: no increasing calibration exists")
    return float(a), float(b)


def pair_scores(
    text_feats: np.ndarray, text_positives: list[set[int]], image_ids: list[int], image_feats: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels of every (text, image) pair of a labelled split."""
    sims = np.asarray(text_feats, dtype=np.float32) @ np.asarray(image_feats, dtype=np.float32).T
    index = {iid: j for j, iid in enumerate(image_ids)}
    labels = np.zeros(sims.shape, dtype=bool)
    for i, positives in enumerate(text_positives):
        for iid in positives:
            j = index.get(iid)
            if j is not None:
                labels[i, j] = True
    return sims.ravel(), labels.ravel()


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: pairs predicted in [low, high)."""

    low: float
    high: float
    pairs: int
    predicted: float  # mean predicted relevance of the bin's pairs
    observed: float  # share of the bin's pairs that match


def reliability(
    predicted: np.ndarray,
    labels: np.ndarray,
    edges: tuple[float, ...] = (0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1),
) -> tuple[list[ReliabilityBin], float]:
    """Per-bin predicted vs observed precision, and the expected calibration error (the
    pair-weighted mean of |predicted - observed|). Bins are finer near 0, where a split of
    one positive per hundreds of images puts nearly all pairs."""
    p = np.asarray(predicted, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    bins: list[ReliabilityBin] = []
    ece = 0.0
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=False)):
        last = k == len(edges) - 2
        mask = (p >= lo) & ((p <= hi) if last else (p < hi))
        n = int(mask.sum())
        if n == 0:
            bins.append(ReliabilityBin(lo, hi, 0, float("nan"), float("nan")))
            continue
        pred, obs = float(p[mask].mean()), float(y[mask].mean())
        bins.append(ReliabilityBin(lo, hi, n, pred, obs))
        ece += n * abs(pred - obs)
    return bins, ece / max(1, p.size)


def format_reliability(bins: list[ReliabilityBin], ece: float) -> str:
    """The reliability diagram as a text table (one row per bin) with a bar of the observed share."""
    lines = ["relevance bin   pairs      predicted  observed", "-" * 58]
    for b in bins:
        if b.pairs == 0:
            lines.append(f"[{b.low:4.2f}, {b.high:4.2f})  {0:>9,}  {'-':>9}  {'-':>8}")
            continue
        bar = "#" * int(round(b.observed * 20))
        lines.append(
            f"[{b.low:4.2f}, {b.high:4.2f})  {b.pairs:>9,}  {b.predicted:9.4f}  {b.observed:8.4f}  {bar}"
        )
    lines.append(f"expected calibration error: {ece:.5f}")
    return "\n".join(lines)
