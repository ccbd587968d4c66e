"""Rows of a failed add that could not be removed at once, removed once the SQL store answers.

An add that fails takes its rows back (operations/ingest.py), so that a 503
stores nothing and the same image can be added again. When the SQL store is
what failed, that removal fails too: a killed MariaDB leaves the rows without
their vectors. They come here, and a background thread removes them as soon
as the store answers, then hands their ids to the vector cleanup (a vector of
theirs may have been written, or may still land).

Two kinds of keys:
- ("id", n): a row the add created; removed whatever its state.
- ("sha", hex): an insert whose outcome is unknown (the store died while it
  ran: the row may exist under an id nobody was told). Removed only while
  still un-indexed, so a later add of the same bytes that finished is kept.

A retried add of the same bytes that reaches the store before this thread
gets "present" for a row about to go; the thread runs within a second of the
store's return, before clients honour their Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from operations.deferred_deletes import RETRY_S, DeferredDeletes, Incarnation
from operations.errors import NotFound
from operations.stores.image_base import ImageStore
from operations.vector_cleanup import VectorCleanup

log = logging.getLogger(__name__)


class RowCleanup(DeferredDeletes):
    """A background queue of image rows (by id, or by sha256 while un-indexed) to remove."""

    label = "row cleanup"

    def __init__(self, images: ImageStore, vectors: VectorCleanup, retry_s: float = RETRY_S) -> None:
        super().__init__(retry_s, vectors.incarnation_now)
        self._images = images
        self._vectors = vectors

    def submit(
        self,
        collection: str,
        ids: Iterable[int] = (),
        shas: Iterable[str] = (),
        incarnation: Incarnation = None,
    ) -> None:
        """Remove these rows of the collection's `incarnation` once SQL answers (see
        VectorCleanup.submit)."""
        keys = [("id", int(i)) for i in ids] + [("sha", str(s)) for s in shas]
        self._submit(collection, keys, incarnation)

    def _delete(self, collection: str, batch: list, incarnation: Incarnation) -> None:
        if not self._images.has_collection(collection):
            raise NotFound(f"collection {collection} is gone")
        ids = [value for kind, value in batch if kind == "id"]
        for sha in (value for kind, value in batch if kind == "sha"):
            found = self._images.find_by_sha(collection, sha)
            if found is not None and not self._images.indexed_ids(collection, [found]):
                ids.append(found)
        if ids:
            self._images.delete(collection, ids)
            log.info("row cleanup: removed %d rows of a failed add from %s", len(ids), collection)
            self._vectors.submit(collection, ids, incarnation)
