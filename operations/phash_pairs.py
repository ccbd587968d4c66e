"""Every pair of stored images whose pHashes are close: the phash links of a duplicate listing.

A page of hashes is probed at once through the SQL band index (operations.phash: a pair
within the distance shares a band up to the probe radius), and each candidate is compared
with the page's hashes that probed its band value. A pair is found from the page of its
lower id only, so each pair is compared once; ids, hashes and candidates are held a page at
a time.

pHash compares greyscale low frequencies, so two different pictures with the same layout of
light and dark (a flat background and a few shapes, as in the demo's scenes) can collide. A
listing therefore also asks the pair's CLIP cosine to reach PHASH_MIN_COSINE: a re-encoded,
resized or cropped copy keeps its picture's vector (cosine near 1), an unrelated picture
does not (bench/README.md, "Duplicate tiers").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from operations.phash import bands, hamming, probe_radius, probe_values
from operations.progress import Progress
from operations.stores.image_base import ImageStore
from operations.stores.vector_base import VectorStore

HASH_PAGE = 512  # pHashes probed per page (4 bands x 17 values each, chunked SQL IN lists)
VECTOR_CHUNK = 500  # ids per vector fetch when pairs are checked by cosine


def iter_phash_pairs(
    images: ImageStore, collection: str, max_distance: int, progress: Progress
) -> Iterator[list[tuple[int, int, int]]]:
    """(a, b, distance) with a < b for every pair within `max_distance` bits, a page at a time."""
    radius = probe_radius(max_distance)
    after = -1
    while not progress.cancelled():
        page = images.phash_rows(collection, after, HASH_PAGE)
        if not page:
            return
        after = page[-1][0]
        by_band: list[dict[int, list[tuple[int, int]]]] = [{} for _ in range(4)]
        for image_id, value in page:
            for i, band in enumerate(bands(value)):
                for probe in probe_values(band, radius):
                    by_band[i].setdefault(probe, []).append((image_id, value))
        found = images.phash_candidates(collection, [list(b) for b in by_band])
        pairs = []
        for other, other_value in found.items():
            compared: set[int] = set()
            for i, band in enumerate(bands(other_value)):
                for image_id, value in by_band[i].get(band, ()):
                    if other > image_id and image_id not in compared:
                        compared.add(image_id)
                        d = hamming(value, other_value)
                        if d <= max_distance:
                            pairs.append((image_id, other, d))
        yield pairs
        progress.advance(len(page))


def confirmed_by_cosine(
    vectors: VectorStore, collection: str, pairs: Sequence[tuple[int, int, int]], min_cosine: float
) -> list[tuple[int, int, int]]:
    """The pairs whose CLIP vectors have a cosine of at least `min_cosine` (0: every pair).
    A pair with a vector missing (an image not indexed yet) is kept: pHash alone judges it."""
    if min_cosine <= 0 or not pairs:
        return list(pairs)
    ids = sorted({x for a, b, _ in pairs for x in (a, b)})
    found: dict[int, np.ndarray] = {}
    for start in range(0, len(ids), VECTOR_CHUNK):
        found.update(vectors.get_vectors(collection, ids[start : start + VECTOR_CHUNK]))
    return [
        (a, b, d)
        for a, b, d in pairs
        if a not in found or b not in found or float(found[a] @ found[b]) >= min_cosine
    ]
