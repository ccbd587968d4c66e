"""Duplicate tiers of an added image.

1. exact: the same bytes (sha256 UNIQUE in SQL; the add reports "present").
2. same picture: re-encoded, resized or lightly cropped; the pHash (operations.phash)
   within PHASH_MAX_DISTANCE bits, found through the SQL band index.
3. near-duplicate: a similar photo (a burst, the same product shot twice); CLIP cosine at or
   above NEAR_DUPLICATE_THRESHOLD (operations.ingest, with `near_duplicates`).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from operations.context import Services
from operations.phash import bands, hamming, phash64, probe_radius, probe_values
from operations.stores.image_base import ImageStore

TIERS = ("exact", "phash", "clip")


def same_picture(
    images: ImageStore, collection: str, value: int, max_distance: int, exclude: Sequence[int] = ()
) -> list[dict]:
    """Stored images whose pHash is within `max_distance` bits of `value`, closest first:
    [{"id", "distance"}]. Only rows sharing a (probed) band are read."""
    radius = probe_radius(max_distance)
    probes = [probe_values(b, radius) for b in bands(value)]
    found = images.phash_candidates(collection, probes)
    skip = set(exclude)
    close = [(hamming(value, h), i) for i, h in found.items() if i not in skip]
    return [{"id": i, "distance": d} for d, i in sorted(close) if d <= max_distance]


def record_phash(svc: Services, collection: str, image_id: int, image: Image.Image) -> int:
    """Compute and store the pHash of a stored image; returns it."""
    value = phash64(image)
    svc.images.put_phashes(collection, [(image_id, value, bands(value))])
    return value
