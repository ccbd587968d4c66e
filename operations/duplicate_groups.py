"""Duplicate groups of a whole collection: the listing behind GET /img/duplicates/{collection}.

Tiers among stored images (operations.duplicates has the three tiers of an add):
- "exact" (the same bytes) cannot occur: sha256 is UNIQUE in the image table, so a second
  copy of the same bytes was never stored (its add answered "present" with the first id);
- "phash": the same picture re-encoded, resized or lightly cropped, pHashes within
  `phash_max_distance` bits, found through the SQL band index a page of hashes at a time;
- "clip": near-duplicates (bursts, the same product shot twice), CLIP cosine at or above
  `near_duplicate_threshold`, found by one batched vector search per page of images, each
  image asking for its CLIP_NEIGHBOURS nearest.

Every link joins two images; a group is a connected component of the links (union-find), so
a burst of 40 shots is one group although each shot only sees its nearest few. A group's
tier is its strongest link (phash before clip). Each member carries its closest link: the
smallest pHash distance and the largest cosine to another member (None where it has none).

Memory: ids, hashes and vectors are read in pages (never the whole collection); what is kept
is the union-find over the images that have at least one link, so it grows with the number
of duplicates, not with the size of the collection.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from operations.context import Services
from operations.errors import Conflict, InvalidInput
from operations.phash import MAX_DISTANCE, bands, hamming, probe_radius, probe_values
from operations.phash_backfill import backfill_phashes
from operations.progress import Counter, Progress
from operations.stores.image_base import ImageStore
from operations.stores.sql_duplicate_store import (
    DuplicateRun,
    GroupMember,
    SqlDuplicateStore,
    StoredGroup,
    batched,
)

LISTING_TIERS = ("phash", "clip")  # strongest first: a group's tier is its strongest link
# Each image's nearest neighbours asked from the vector store. A larger burst is still one
# group: its members reach each other through their own neighbours (union-find).
CLIP_NEIGHBOURS = 16
HASH_PAGE = 512  # pHashes probed per page (4 bands x 17 values each, chunked SQL IN lists)
VECTOR_PAGE = 256  # vectors fetched and searched per page (one batched search)
WRITE_BATCH = 500  # groups written per batch


def duplicate_store(svc: Services) -> SqlDuplicateStore:
    """The listing store beside the image store (the same SQL database and pool)."""
    store = svc.extra.get("duplicate_store")
    if store is None:
        pool = getattr(svc.images, "pool", None)
        if pool is None:
            raise Conflict("duplicate listings need the SQL image store (MySQL or SQLite)")
        store = svc.extra.setdefault("duplicate_store", SqlDuplicateStore(pool))
    return store


@dataclass
class Links:
    """Union-find over linked images, with each image's closest link of either tier."""

    parent: dict[int, int] = field(default_factory=dict)
    distance: dict[int, int] = field(default_factory=dict)
    score: dict[int, float] = field(default_factory=dict)

    def _find(self, x: int) -> int:
        root = x
        while self.parent.setdefault(root, root) != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression keeps later finds short
            self.parent[x], x = root, self.parent[x]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def add_phash(self, a: int, b: int, distance: int) -> None:
        self._union(a, b)
        for x in (a, b):
            self.distance[x] = min(distance, self.distance.get(x, distance))

    def add_clip(self, a: int, b: int, score: float) -> None:
        self._union(a, b)
        for x in (a, b):
            self.score[x] = max(score, self.score.get(x, score))

    def groups(self) -> list[StoredGroup]:
        """The components in listing order: tier (phash first), larger first, then by first id;
        numbered 1..n, members by id."""
        members: dict[int, list[int]] = {}
        for x in self.parent:
            members.setdefault(self._find(x), []).append(x)
        found = []
        for ids in members.values():
            ids.sort()
            tier = "phash" if any(x in self.distance for x in ids) else "clip"
            found.append((LISTING_TIERS.index(tier), -len(ids), ids[0], tier, ids))
        found.sort()
        return [
            StoredGroup(
                n,
                tier,
                len(ids),
                [GroupMember(x, self.distance.get(x), self.score.get(x)) for x in ids],
            )
            for n, (_, _, _, tier, ids) in enumerate(found, start=1)
        ]


def phash_links(
    images: ImageStore, collection: str, max_distance: int, links: Links, progress: Progress
) -> None:
    """Link every pair of stored hashes within `max_distance` bits, a page of hashes at a time.

    For a page, the band index is asked once per band for every probe value of the page
    (operations.phash: a pair within the distance shares a band up to the probe radius), and
    each candidate is compared with the page's hashes that probed its band value. A pair is
    linked from the page of its lower id only, so each pair is compared once.
    """
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
        for other, other_value in found.items():
            compared: set[int] = set()
            for i, band in enumerate(bands(other_value)):
                for image_id, value in by_band[i].get(band, ()):
                    if other > image_id and image_id not in compared:
                        compared.add(image_id)
                        d = hamming(value, other_value)
                        if d <= max_distance:
                            links.add_phash(image_id, other, d)
        progress.advance(len(page))


def clip_links(svc: Services, collection: str, threshold: float, links: Links, progress: Progress) -> None:
    """Link each indexed image to its nearest neighbours at or above `threshold` (cosine)."""
    after = -1
    while not progress.cancelled():
        ids = svc.images.indexed_ids_after(collection, after, VECTOR_PAGE)
        if not ids:
            return
        after = ids[-1]
        vectors = svc.vectors.get_vectors(collection, ids)
        present = [i for i in ids if i in vectors]
        if present:
            matrix = np.stack([vectors[i] for i in present])
            hits = svc.vectors.search(collection, matrix, CLIP_NEIGHBOURS + 1)  # +1: the image itself
            for image_id, row in zip(present, hits, strict=True):
                for h in row:
                    if h.id != image_id and h.score >= threshold:
                        links.add_clip(image_id, h.id, round(float(h.score), 6))
        progress.advance(len(ids))


def check_tiers(tiers: Sequence[str]) -> tuple[str, ...]:
    """The requested tiers in listing order, or InvalidInput."""
    unknown = [t for t in tiers if t not in LISTING_TIERS]
    if unknown or not tiers:
        raise InvalidInput(
            f"tiers are one or more of {', '.join(LISTING_TIERS)} "
            "(exact copies are never stored twice: sha256 is unique)"
        )
    return tuple(t for t in LISTING_TIERS if t in tiers)


def compute_duplicates(
    svc: Services,
    collection: str,
    run_id: str,
    progress: Progress | None = None,
    *,
    tiers: Sequence[str] = LISTING_TIERS,
    phash_max_distance: int | None = None,
    near_duplicate_threshold: float | None = None,
) -> DuplicateRun | None:
    """List the duplicate groups of `collection` and store them as run `run_id`.

    With the phash tier, images without a pHash (a dataset load's) are hashed first
    (operations.phash_backfill). Returns the run, or None when cancelled (nothing is shown
    of a run that did not finish).
    """
    svc.require_collection(collection)
    chosen = check_tiers(tiers)
    s = svc.settings
    max_distance = s.phash_max_distance if phash_max_distance is None else int(phash_max_distance)
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise InvalidInput(f"phash_max_distance must be in 0..{MAX_DISTANCE} (what the band index finds)")
    threshold = s.near_duplicate_threshold if near_duplicate_threshold is None else near_duplicate_threshold
    if not -1.0 <= threshold <= 1.0:
        raise InvalidInput("near_duplicate_threshold is a cosine similarity in -1..1")
    progress = progress or Counter()
    store = duplicate_store(svc)
    store.clear_run(collection, run_id)
    images = svc.images.count(collection)
    missing = svc.images.count_without_phash(collection) if "phash" in chosen else 0
    progress.set_total(missing + (images if "phash" in chosen else 0) + (images if "clip" in chosen else 0))
    links = Links()
    if "phash" in chosen:
        backfill_phashes(svc, collection, progress, own_total=False)
        phash_links(svc.images, collection, max_distance, links, progress)
    if "clip" in chosen and not progress.cancelled():
        clip_links(svc, collection, threshold, links, progress)
    if progress.cancelled():
        return None
    groups = links.groups()
    for batch in batched(groups, WRITE_BATCH):
        store.put_groups(collection, run_id, batch)
    counts = {t: sum(g.tier == t for g in groups) for t in chosen}
    run = DuplicateRun(
        run_id,
        time.time(),
        images,
        svc.images.count_without_phash(collection),
        len(groups),
        counts,
        {
            "tiers": list(chosen),
            "phash_max_distance": max_distance,
            "near_duplicate_threshold": threshold,
        },
    )
    store.finish_run(collection, run)
    progress.flush()
    return run
