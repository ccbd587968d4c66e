"""Removing images for good from both stores."""

from __future__ import annotations

from operations.bounds import check_image_ids
from operations.context import Services
from operations.domain import SearchFilter
from operations.errors import InvalidInput
from operations.ocr import forget

CHUNK = 1000


def delete_ids(svc: Services, collection: str, ids: list[int]) -> int:
    """Delete images by id; returns how many rows existed.

    The vector goes first, so no search can return an id whose row is gone;
    it returns once the delete is visible to every later search (`wait_visible`).
    Deleting again is harmless, so an interrupted delete is finished by retrying.
    """
    ids = check_image_ids(ids)
    svc.require_collection(collection)
    removed = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        svc.vectors.delete(collection, chunk, visible=False)
        removed += svc.images.delete(collection, chunk)
        forget(svc, collection, chunk)
    svc.vectors.wait_visible(collection)
    return removed


def delete_matching(svc: Services, collection: str, flt: SearchFilter) -> int:
    """Delete every image whose metadata matches `flt` (which must not be empty)."""
    if flt.is_empty():
        raise InvalidInput("a delete by filter needs at least one condition; drop the collection to empty it")
    svc.require_collection(collection)
    removed = 0
    while ids := svc.images.ids_matching(collection, flt, CHUNK):
        svc.vectors.delete(collection, ids, visible=False)
        removed += svc.images.delete(collection, ids)
        forget(svc, collection, ids)
    svc.vectors.wait_visible(collection)
    return removed
