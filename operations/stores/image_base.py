"""The image store interface and the row it keeps per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from operations.stores.vector_base import SearchFilter


@dataclass
class ImageRow:
    """One stored image. `image_b64` is None when only metadata was fetched."""

    id: int | None
    sha256: str
    image_b64: str | None = None
    mime: str = "image/jpeg"
    width: int = 0
    height: int = 0
    source: str = ""
    tags: tuple[str, ...] = ()
    external_id: str | None = None
    created_at: int = 0
    added_at: int = 0
    indexed: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InsertResult:
    """Outcome of inserting rows with given ids."""

    inserted: list[int]
    already_present: list[int]  # same id existed (a re-run load)
    duplicate_of: dict[int, int]  # id -> existing id holding the same bytes
    rejected: dict[int, str] = field(default_factory=dict)  # id -> why the row cannot be stored


class ImageStore(Protocol):
    """Images and their metadata, keyed by the same id as the vector."""

    # Several connections may insert at once (loads then use LOAD_SQL_WRITERS).
    parallel_writes: bool

    def ping(self) -> None: ...
    def ensure_collection(self, collection: str) -> None: ...
    def has_collection(self, collection: str) -> bool: ...
    def drop_collection(self, collection: str) -> None: ...
    def insert_rows(self, collection: str, rows: Sequence[ImageRow]) -> InsertResult: ...
    def insert_new(self, collection: str, row: ImageRow) -> tuple[int, bool]: ...
    def mark_indexed(self, collection: str, ids: Sequence[int]) -> None: ...
    def unindexed_ids(self, collection: str, limit: int) -> list[int]: ...
    def indexed_ids(self, collection: str, ids: Sequence[int]) -> set[int]: ...
    def get_rows(
        self, collection: str, ids: Sequence[int], with_image: bool = False
    ) -> dict[int, ImageRow]: ...
    def find_by_sha(self, collection: str, sha256: str) -> int | None: ...
    def ids_matching(self, collection: str, flt: SearchFilter, limit: int) -> list[int]: ...
    def delete(self, collection: str, ids: Sequence[int]) -> int: ...
    def count(self, collection: str) -> int: ...
    def close(self) -> None: ...
