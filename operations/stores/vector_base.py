"""The vector store interface: what every vector store (Milvus, in-memory) provides."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from operations.domain import CollectionInfo, Hit, IndexSpec, SearchFilter, VectorAttrs

# The most hits one query of a vector store returns (`search` top_k, `range_search` limit):
# Milvus' own limit for one search. Not the API's top_k (operations.search.MAX_SEARCH_TOP_K).
MAX_STORE_HITS = 16384


class VectorStore(Protocol):
    """Vectors keyed by image id, one collection per library and model."""

    # True when array filters (tags) cost a pass over every row in Python
    # (Milvus Lite): searches then resolve tags in SQL (operations.vector_filter).
    @property
    def slow_array_filters(self) -> bool: ...

    def ping(self) -> None: ...
    def create_collection(self, name: str, dim: int, model_name: str, index: IndexSpec) -> None: ...
    def has_collection(self, name: str) -> bool: ...
    def describe(self, name: str) -> CollectionInfo: ...
    def describe_meta(self, name: str, fresh: bool = False) -> CollectionInfo:
        """Model, dim, index and incarnation, count 0; `fresh`: asked of the store now, not
        taken from what this process cached (another process may have made it again)."""

    def get_vectors(self, name: str, ids: Sequence[int]) -> dict[int, np.ndarray]: ...
    def list_collections(self) -> list[str]: ...
    def drop_collection(self, name: str) -> None: ...
    def upsert(
        self,
        name: str,
        ids: Sequence[int],
        vectors: np.ndarray,
        attrs: Sequence[VectorAttrs] | None = None,
        *,
        visible: bool = True,
        model: str | None = None,
        incarnation: int | None = None,
    ) -> int:
        """Write vectors by id; `visible`: return once searches see them. `model`: what the
        vectors were encoded with; `incarnation`: the making of the collection the write began
        on (`incarnation(fresh=True)`); both checked against the collection as it is now
        (Conflict, nothing written: see domain.check_written_model)."""

    def delete(self, name: str, ids: Sequence[int], *, visible: bool = True) -> None:
        """Delete by id; `visible`: return once searches no longer see them."""

    def flush(self, name: str, bulk: bool = False) -> None:
        """Seal what was written; returns once searches see it (`wait_visible`)."""

    def wait_visible(self, name: str) -> None:
        """Return once this process's writes to `name` are visible to every later search."""

    def incarnation(self, name: str, fresh: bool = False) -> int | None:
        """This making of the collection: a value that differs once it is dropped and made again,
        by this process or another (None where there is none: Milvus Lite, one process). Without
        `fresh`, what this process last described, with no call (None if it has not)."""

    def write_generation(self, name: str) -> int:
        """A number this process's writes to `name` advance (when one starts, ends and
        becomes visible): a search result may be reused only while it is unchanged."""

    def time_partitions(self, name: str) -> list[str]:
        """The names of the collection's time partitions (IndexSpec.time_partitions; none
        without), oldest first."""

    def drop_partitions(self, name: str, partitions: Sequence[str]) -> None:
        """Drop whole time partitions with every row in them (one already gone is skipped)."""

    def existing_ids(self, name: str, ids: Sequence[int]) -> set[int]: ...
    def count(self, name: str) -> int: ...
    def search(
        self, name: str, vectors: np.ndarray, top_k: int, flt: SearchFilter | None = None
    ) -> list[list[Hit]]: ...
    def range_search(
        self,
        name: str,
        vector: np.ndarray,
        min_score: float,
        limit: int,
        flt: SearchFilter | None = None,
        max_score: float | None = None,
    ) -> list[Hit]:
        """The best `limit` hits with min_score <= score (<= max_score when given), best first."""

    def range_pages(
        self, name: str, vector: np.ndarray, min_score: float, page_size: int, flt: SearchFilter | None = None
    ) -> Iterator[list[Hit]]:
        """Every hit with score >= min_score, best first, in lists of at most `page_size`:
        no cap on the total (a risk scan reads them all)."""

    def close(self) -> None: ...
