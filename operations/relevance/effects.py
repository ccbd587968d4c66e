"""Effects of the query language on a labelled demo split, measured by exact search.

The arithmetic is the service's own (`compose`, `closer_to_unwanted`); the search is exact over
the split's image features, which is what a FLAT collection returns. Two measures, both over
the scene descriptions (`${split}_scenes.jsonl`) of the demo generator:

- negation, "<shape> -<colour>" against "<shape>" (and "<colour> -<shape>" against "<colour>"):
  the share of the top k holding the unwanted colour (shape), and the share holding the wanted
  shape (colour);
- negation without text: a stored image with "-<one of its colours>" against the image alone;
- feedback: "一个<colour>的<shape>" against the same query with three positive_ids, the first
  three images of the plain ranking that hold the object (what a user clicks 更像这个 on);
  precision@k is counted without those three in either list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from operations.relevance.compose import QueryParts, Weights, closer_to_unwanted, compose

DEFAULT_WEIGHTS = Weights()


@dataclass
class SplitIndex:
    """Image ids, their features and, per image, the (shape, colour) objects it holds."""

    image_ids: list[int]
    feats: np.ndarray
    objects: list[set[tuple[str, str]]]

    def shapes(self, i: int) -> set[str]:
        return {s for s, _ in self.objects[i]}

    def colours(self, i: int) -> set[str]:
        return {c for _, c in self.objects[i]}


def _top(index: SplitIndex, q: np.ndarray, k: int, exclude: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    order = np.argsort(-(index.feats @ q), kind="stable")
    return [int(i) for i in order if int(i) not in exclude][:k]


def negated_search(
    index: SplitIndex, wanted: np.ndarray, unwanted: np.ndarray, k: int, weights: Weights
) -> list[int]:
    """Top k rows of the query "wanted -unwanted" by the service's rule (subtract, then drop
    the candidates closer to the unwanted term), from an oversampled candidate list."""
    q = compose(QueryParts(positives=[(wanted, 1.0)], negatives=[(unwanted, 1.0)]), weights)
    cand = _top(index, q, min(len(index.image_ids), k * 4))
    drop = closer_to_unwanted(index.feats[cand], wanted, [unwanted])
    return [c for c, d in zip(cand, drop, strict=False) if not d][:k]


@dataclass
class NegationEffect:
    queries: int
    plain_unwanted_share: float
    negated_unwanted_share: float
    plain_wanted_share: float
    negated_wanted_share: float


def negation_effect(
    index: SplitIndex,
    encode: Callable[[Sequence[str]], np.ndarray],
    pairs: list[tuple[str, str, str, str]],
    k: int = 10,
    weights: Weights = DEFAULT_WEIGHTS,
) -> NegationEffect:
    """`pairs`: (wanted word, unwanted word, wanted key, unwanted key); keys are shape or colour
    names of the scene descriptions. Shares are of all top-k slots over all queries."""
    words = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
    vec = dict(zip(words, encode(words), strict=False))

    def holds(i: int, key: str) -> bool:
        return key in index.shapes(i) or key in index.colours(i)

    pu = nu = pw = nw = 0
    slots_p = slots_n = 0
    for want_w, unwant_w, want_k, unwant_k in pairs:
        plain = _top(index, vec[want_w], k)
        neg = negated_search(index, vec[want_w], vec[unwant_w], k, weights)
        pu += sum(holds(i, unwant_k) for i in plain)
        pw += sum(holds(i, want_k) for i in plain)
        nu += sum(holds(i, unwant_k) for i in neg)
        nw += sum(holds(i, want_k) for i in neg)
        slots_p += len(plain)
        slots_n += len(neg)
    return NegationEffect(
        len(pairs), pu / max(1, slots_p), nu / max(1, slots_n), pw / max(1, slots_p), nw / max(1, slots_n)
    )


@dataclass
class ImageNegationEffect:
    queries: int
    plain_unwanted_share: float
    negated_unwanted_share: float
    plain_shared_share: float  # results sharing another (shape, colour) object with the query image
    negated_shared_share: float


def image_negation_effect(
    index: SplitIndex,
    encode: Callable[[Sequence[str]], np.ndarray],
    colours: dict[str, str],
    n_queries: int = 150,
    k: int = 10,
    weights: Weights = DEFAULT_WEIGHTS,
) -> ImageNegationEffect:
    """Stored images as queries with "-<one of their colours>" (no wanted text): the share of
    the top k holding that colour, and the share still sharing another object with the query."""
    keys = sorted(colours)
    vec = dict(zip(keys, encode([colours[c] for c in keys]), strict=True))
    rows = np.random.default_rng(0).choice(
        len(index.image_ids), min(n_queries, len(index.image_ids)), replace=False
    )
    pu = nu = ps = ns = slots = 0
    for qi in (int(r) for r in rows):
        held = sorted(index.colours(qi))
        colour = held[qi % len(held)]
        others = {o for o in index.objects[qi] if o[1] != colour}
        q = compose(QueryParts(image=index.feats[qi], negatives=[(vec[colour], 1.0)]), weights)
        plain = _top(index, index.feats[qi], k, {qi})
        neg = _top(index, q, k, {qi})
        pu += sum(colour in index.colours(i) for i in plain)
        nu += sum(colour in index.colours(i) for i in neg)
        ps += sum(bool(others & index.objects[i]) for i in plain)
        ns += sum(bool(others & index.objects[i]) for i in neg)
        slots += k
    n = max(1, slots)
    return ImageNegationEffect(len(rows), pu / n, nu / n, ps / n, ns / n)


@dataclass
class FeedbackEffect:
    queries: int
    plain_precision: float
    feedback_precision: float


def feedback_effect(
    index: SplitIndex,
    encode: Callable[[Sequence[str]], np.ndarray],
    objects: list[tuple[str, str, str]],
    k: int = 10,
    n_positive: int = 3,
    weights: Weights = DEFAULT_WEIGHTS,
) -> FeedbackEffect:
    """`objects`: (query text, shape, colour). Queries with fewer than `n_positive` holders in
    the plain top 100 are skipped (the user has nothing to click)."""
    vecs = encode([o[0] for o in objects])
    plain_hits = fb_hits = slots = used = 0
    for (_, shape, colour), qv in zip(objects, vecs, strict=False):
        ranking = _top(index, qv, 100)
        pos = [i for i in ranking if (shape, colour) in index.objects[i]][:n_positive]
        if len(pos) < n_positive:
            continue
        used += 1
        q = compose(
            QueryParts(positives=[(qv, 1.0)], feedback_positive=[index.feats[i] for i in pos]), weights
        )
        excl = set(pos)
        plain = _top(index, qv, k, excl)
        fb = _top(index, q, k, excl)
        plain_hits += sum((shape, colour) in index.objects[i] for i in plain)
        fb_hits += sum((shape, colour) in index.objects[i] for i in fb)
        slots += k
    return FeedbackEffect(used, plain_hits / max(1, slots), fb_hits / max(1, slots))


def load_split_index(encoder, dataset_dir: Path, split: str) -> SplitIndex:
    """The split's images encoded by `encoder`, with the objects of `${split}_scenes.jsonl`."""
    from operations.relevance.calibrate import _encode_images

    ids, feats = _encode_images(encoder, dataset_dir / f"{split}_imgs.tsv")
    objects: dict[int, set[tuple[str, str]]] = {}
    with open(dataset_dir / f"{split}_scenes.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            objects[int(d["image_id"])] = {(o["shape"], o["colour"]) for o in d["objects"]}
    return SplitIndex(ids, feats, [objects.get(i, set()) for i in ids])


def demo_queries(
    shapes: dict[str, str], colours: dict[str, str]
) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]], list[tuple[str, str, str]]]:
    """The measured queries from the vocabulary (key -> Chinese word): "<shape> -<colour>",
    "<colour> -<shape>" and "一个<colour>的<shape>"."""
    shape_neg = [(shapes[s], colours[c], s, c) for s in shapes for c in colours]
    colour_neg = [(colours[c], shapes[s], c, s) for s in shapes for c in colours]
    objs = [(f"一个{colours[c]}的{shapes[s]}", s, c) for s in shapes for c in colours]
    return shape_neg, colour_neg, objs


def measure(encoder, dataset_dir: Path, split: str, shapes, colours, weights: Weights) -> dict:
    """All effects of the module on one split, as a JSON-ready dict."""
    index = load_split_index(encoder, dataset_dir, split)
    shape_neg, colour_neg, objs = demo_queries(shapes, colours)
    return {
        "split": split,
        "images": len(index.image_ids),
        "weights": weights.__dict__,
        "shape_minus_colour": negation_effect(
            index, encoder.encode_texts, shape_neg, weights=weights
        ).__dict__,
        "colour_minus_shape": negation_effect(
            index, encoder.encode_texts, colour_neg, weights=weights
        ).__dict__,
        "image_minus_colour": image_negation_effect(
            index, encoder.encode_texts, colours, weights=weights
        ).__dict__,
        "feedback_3_positives": feedback_effect(index, encoder.encode_texts, objs, weights=weights).__dict__,
    }
