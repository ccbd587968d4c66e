"""Duplicate groups of a whole collection: the listing behind GET /img/duplicates/{collection}.

Tiers among stored images (operations.duplicates has the three tiers of an add):
- "exact" (the same bytes) cannot occur: sha256 is UNIQUE in the image table, so a second
  copy of the same bytes was never stored (its add answered "present" with the first id);
- "phash": the same picture re-encoded, resized or lightly cropped: pHashes within
  `phash_max_distance` bits (operations.phash_pairs, through the SQL band index) whose CLIP
  vectors also have a cosine of at least `phash_min_cosine` (a pHash collision between two
  different pictures is dropped);
- "clip": near-duplicates (bursts, the same product shot twice), CLIP cosine at or above
  `near_duplicate_threshold`, found by one batched vector search per page of images, each
  image asking for its CLIP_NEIGHBOURS nearest.

Every link joins two images; a group is a connected component of the links
(operations.duplicate_links), so a burst of 40 shots is one group although each shot only
sees its nearest few. The price of components is chaining: A like B and B like C puts A and
C in one group however unlike they are (measured in bench/README.md, "Duplicate tiers").

Memory: ids, hashes and vectors are read in pages (never the whole collection); what is kept
is the union-find over the images that have at least one link, so it grows with the number
of duplicates, not with the size of the collection.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

import numpy as np

from operations.aliases import ResolvingStore
from operations.context import Services
from operations.duplicate_links import LISTING_TIERS, Links
from operations.errors import Conflict, InvalidInput
from operations.phash import MAX_DISTANCE
from operations.phash_backfill import backfill_phashes
from operations.phash_pairs import confirmed_by_cosine, iter_phash_pairs
from operations.progress import Counter, Progress
from operations.stores.sql_duplicate_store import DuplicateRun, SqlDuplicateStore, batched

# Each image's nearest neighbours asked from the vector store. A larger burst is still one
# group: its members reach each other through their own neighbours (union-find).
CLIP_NEIGHBOURS = 16
# Vectors fetched and searched per page: one batched search, which must finish within the
# store's deadline (MILVUS_TIMEOUT_S) however large the collection, so pages stay small.
VECTOR_PAGE = 64
WRITE_BATCH = 500  # groups written per batch


def duplicate_store(svc: Services) -> SqlDuplicateStore:
    """The listing store beside the image store (the same SQL database and pool)."""
    store = svc.extra.get("duplicate_store")
    if store is None:
        pool = getattr(svc.images, "pool", None)
        if pool is None:
            raise Conflict("duplicate listings need the SQL image store (MySQL or SQLite)")
        raw = SqlDuplicateStore(pool)
        # Collection names resolved like the image store's (operations.aliases).
        wrapped = raw if svc.aliases is None else cast(SqlDuplicateStore, ResolvingStore(raw, svc.aliases))
        store = svc.extra.setdefault("duplicate_store", wrapped)
    return store


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
    phash_min_cosine: float | None = None,
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
    min_cosine = s.phash_min_cosine if phash_min_cosine is None else phash_min_cosine
    if not (-1.0 <= threshold <= 1.0 and -1.0 <= min_cosine <= 1.0):
        raise InvalidInput("near_duplicate_threshold and phash_min_cosine are cosine similarities in -1..1")
    progress = progress or Counter()
    store = duplicate_store(svc)
    store.clear_run(collection, run_id)
    images = svc.images.count(collection)
    missing = svc.images.count_without_phash(collection) if "phash" in chosen else 0
    progress.set_total(missing + (images if "phash" in chosen else 0) + (images if "clip" in chosen else 0))
    links = Links()
    if "phash" in chosen:
        backfill_phashes(svc, collection, progress, own_total=False)
        for pairs in iter_phash_pairs(svc.images, collection, max_distance, progress):
            for a, b, d in confirmed_by_cosine(svc.vectors, collection, pairs, min_cosine):
                links.add_phash(a, b, d)
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
            "phash_min_cosine": min_cosine,
            "near_duplicate_threshold": threshold,
        },
    )
    store.finish_run(collection, run)
    progress.flush()
    return run
