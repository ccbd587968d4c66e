"""Reciprocal rank fusion of the CLIP ranking and the OCR text ranking (hybrid search).

Each list contributes weight / (k + rank) for every image it ranks (rank from 1);
an image in both lists adds both. Ranks, not scores, are fused: a cosine and a
text match are not on one scale, and RRF needs no calibration between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MODES = ("visual", "text", "hybrid")


@dataclass
class Fused:
    """One image of the fused ranking: its RRF score and the signals that ranked it."""

    image_id: int
    score: float
    signals: list[str] = field(default_factory=list)


def rrf(rankings: Mapping[str, Sequence[int]], weights: Mapping[str, float], k: int) -> list[Fused]:
    """Fuse ranked id lists (best first) by reciprocal rank; ties broken by id, newest first."""
    fused: dict[int, Fused] = {}
    for signal, ids in rankings.items():
        weight = weights.get(signal, 1.0)
        for rank, image_id in enumerate(ids, 1):
            item = fused.setdefault(image_id, Fused(image_id, 0.0))
            item.score += weight / (k + rank)
            item.signals.append(signal)
    return sorted(fused.values(), key=lambda f: (-f.score, -f.image_id))
