"""Removing images for good from both stores."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from operations.bounds import check_image_ids
from operations.context import Services
from operations.domain import SearchFilter
from operations.errors import InvalidInput
from operations.ocr import forget
from operations.progress import Progress

CHUNK = 1000


def delete_chunks(
    svc: Services,
    collection: str,
    chunks: Iterable[list[int]],
    progress: Progress | None = None,
    vectors_left: Callable[[], bool] | None = None,
    cancellable: bool = True,
) -> int:
    """Delete each chunk of ids from every store; returns how many SQL rows existed.

    Per chunk the vector goes first, so no search can return an id whose row is gone, then
    the SQL row (with its pHash), then its OCR record. Deleting again is harmless, so an
    interrupted delete is finished by running it again. Returns once the deletes are visible
    to every later search (`wait_visible`). With `progress`, each chunk's rows are counted
    and a cancel stops the work between chunks (unless not `cancellable`). `vectors_left`:
    asked before each chunk; False skips the vector delete (retention dropped the rows'
    partitions already).
    """
    removed = 0
    for ids in chunks:
        if cancellable and progress is not None and progress.cancelled():
            break
        if vectors_left is None or vectors_left():
            svc.vectors.delete(collection, ids, visible=False)
        n = svc.images.delete(collection, ids)
        forget(svc, collection, ids)
        removed += n
        if progress is not None:
            progress.advance(n)
    svc.vectors.wait_visible(collection)
    return removed


def matching_chunks(svc: Services, collection: str, flt: SearchFilter) -> Iterable[list[int]]:
    """Chunks of the ids that match `flt` now, read again after each chunk is deleted, until
    none is left."""
    return iter(lambda: svc.images.ids_matching(collection, flt, CHUNK), [])


def delete_ids(svc: Services, collection: str, ids: list[int]) -> int:
    """Delete images by id; returns how many rows existed (see `delete_chunks`)."""
    ids = check_image_ids(ids)
    svc.require_collection(collection)
    return delete_chunks(svc, collection, (ids[s : s + CHUNK] for s in range(0, len(ids), CHUNK)))


def delete_matching(svc: Services, collection: str, flt: SearchFilter) -> int:
    """Delete every image whose metadata matches `flt` (which must not be empty)."""
    if flt.is_empty():
        raise InvalidInput("a delete by filter needs at least one condition; drop the collection to empty it")
    svc.require_collection(collection)
    return delete_chunks(svc, collection, matching_chunks(svc, collection, flt))
