"""Vector arithmetic of a composed query (weights, unwanted terms, an image, feedback).

All vectors are L2-normalised embeddings of one model. The rule (README, "Relevance"):

    anchor = normalise( normalise(sum_i w_i * t_i)  +  image_weight * image )   (either part alone
                                                                                 when one is absent)
    q      = anchor + beta * mean(positive_ids) - gamma * mean(negative_ids)
             - lambda * sum_j w_j * n_j                        then normalised
    (Rocchio; without text or image the anchor is mean(positive_ids) and beta is not added again)

t_i: wanted terms, n_j: unwanted terms, lambda NEGATIVE_TERM_WEIGHT (NEGATIVE_TERM_WEIGHT_NO_TEXT
when the query has no wanted text), beta / gamma
FEEDBACK_POSITIVE_WEIGHT / FEEDBACK_NEGATIVE_WEIGHT, image_weight QUERY_IMAGE_WEIGHT.

Subtracting only pushes results down; an unwanted term also removes a result outright when the
result is closer to the unwanted term than to the wanted text (`closer_to_unwanted`): both are
text-to-image similarities of one model, so the comparison needs no threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from operations.errors import InvalidInput

_EPS = 1e-6


@dataclass(frozen=True)
class Weights:
    """The arithmetic's weights (from settings)."""

    negative_term: float = 0.0
    feedback_positive: float = 3.0
    feedback_negative: float = 0.25
    image: float = 1.0
    # Without wanted text (an image or feedback alone) no text similarity exists to compare an
    # unwanted term with, so the term is only subtracted, and an image anchor's similarities
    # are on another scale than text's: it takes a larger weight.
    negative_term_no_text: float = 2.0


@dataclass
class QueryParts:
    """The encoded parts of one query; any may be empty."""

    positives: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (vector, weight)
    negatives: list[tuple[np.ndarray, float]] = field(default_factory=list)
    image: np.ndarray | None = None
    feedback_positive: list[np.ndarray] = field(default_factory=list)
    feedback_negative: list[np.ndarray] = field(default_factory=list)


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(v))
    if n < _EPS:
        raise InvalidInput(f"{what} cancels out (its vector is zero): change the weights or terms")
    return (v / n).astype(np.float32)


def positive_text(parts: QueryParts) -> np.ndarray | None:
    """The weighted sum of the wanted terms, normalised; None without wanted text."""
    if not parts.positives:
        return None
    return _unit(sum(w * v for v, w in parts.positives), "the wanted text")  # type: ignore[arg-type]


def compose(parts: QueryParts, weights: Weights) -> np.ndarray:
    """The query vector of `parts` by the module's rule."""
    text = positive_text(parts)
    if text is not None and parts.image is not None:
        anchor = _unit(text + weights.image * parts.image, "text plus image")
    elif text is not None:
        anchor = text
    elif parts.image is not None:
        anchor = np.asarray(parts.image, dtype=np.float32)
    elif parts.feedback_positive:
        anchor = _unit(np.mean(parts.feedback_positive, axis=0), "the positive examples")
    else:
        raise InvalidInput("nothing to search by: give wanted terms, an image or positive_ids")
    q = anchor.astype(np.float64)
    if parts.feedback_positive and (text is not None or parts.image is not None):
        q = q + weights.feedback_positive * np.mean(parts.feedback_positive, axis=0)
    if parts.feedback_negative:
        q = q - weights.feedback_negative * np.mean(parts.feedback_negative, axis=0)
    lam = weights.negative_term if text is not None else weights.negative_term_no_text
    for v, w in parts.negatives:
        q = q - lam * w * v
    return _unit(q, "the query")


def closer_to_unwanted(candidates: np.ndarray, wanted: np.ndarray, unwanted: list[np.ndarray]) -> np.ndarray:
    """Mask of candidate vectors (rows) more similar to some unwanted term than to `wanted`."""
    if not unwanted or len(candidates) == 0:
        return np.zeros(len(candidates), dtype=bool)
    c = np.asarray(candidates, dtype=np.float32)
    to_wanted = c @ np.asarray(wanted, dtype=np.float32)
    to_unwanted = (c @ np.stack(unwanted).astype(np.float32).T).max(axis=1)
    return to_unwanted > to_wanted
