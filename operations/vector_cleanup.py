"""Vectors whose write may have landed after their add failed, deleted once Milvus answers.

A vector write that times out has an unknown outcome: a frozen Milvus server
holds the request and applies it when it runs again, seconds after the add
answered 503 and took its SQL rows back. Those ids would be vectors without
rows (counts that disagree, hits with nothing to show). So the add hands
them here, and a background thread deletes them as soon as the server answers
(deleting an id that was never written is harmless). The queue lives in this
process: a process killed before the server returns leaves such vectors,
which searches skip (the SQL row is the source of truth for what exists).

Only ids whose rows are gone come here: a row's id is never given again (the
image tables count ids up, never reuse them), so a late delete cannot hit
another image's vector. A collection dropped and made again starts its ids
again: the ids are held with the collection's incarnation, and dropped once
another making of it holds the name (operations/deferred_deletes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from operations.deferred_deletes import RETRY_S, DeferredDeletes, Incarnation
from operations.stores.vector_base import VectorStore

log = logging.getLogger(__name__)


class VectorCleanup(DeferredDeletes):
    """A background queue of (collection, ids) to delete from the vector store."""

    label = "vector cleanup"

    def __init__(self, vectors: VectorStore, retry_s: float = RETRY_S) -> None:
        super().__init__(retry_s, self.incarnation_now)
        self._vectors = vectors

    def incarnation_now(self, collection: str) -> Incarnation:
        """Which making of the collection holds its name now (asks the vector store)."""
        return self._vectors.incarnation(collection, fresh=True)

    def submit(self, collection: str, ids: Sequence[int], incarnation: Incarnation = None) -> None:
        """Delete these ids of the collection's `incarnation` (VectorStore.incarnation) once
        Milvus answers; nothing if it has been made again by then."""
        self._submit(collection, (int(i) for i in ids), incarnation)

    def _delete(self, collection: str, batch: list, incarnation: Incarnation) -> None:
        self._vectors.delete(collection, batch, visible=False)
        log.info("vector cleanup: deleted %d vectors of a failed add from %s", len(batch), collection)
