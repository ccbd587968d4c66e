"""The vector store interface, its value types, and an exact in-memory store.

The in-memory store is the reference for congruence tests and fast unit
tests; the Milvus store (`milvus_store.py`) is what users run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from operations.errors import Conflict, NotFound
from operations.names import validate_name

INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW")
# Milvus caps partitions per collection (rootCoord.maxPartitionNum, 1024 on small setups).
MAX_SOURCE_PARTITIONS = 1024


@dataclass(frozen=True)
class IndexSpec:
    """Index type and its build/search parameters (validated by `check`)."""

    type: str = "FLAT"
    build_params: dict = field(default_factory=dict)
    search_params: dict = field(default_factory=dict)
    # > 0: Milvus hashes `source` into this many partitions (a partition key),
    # so a search filtered by source reads only its partitions. Large
    # libraries with many sources; results are the same either way.
    source_partitions: int = 0

    def check(self) -> IndexSpec:
        from operations.errors import InvalidInput

        if self.type not in INDEX_TYPES:
            raise InvalidInput(f"index type must be one of {INDEX_TYPES}, not {self.type!r}")
        allowed = {
            "FLAT": (set(), set()),
            "IVF_FLAT": ({"nlist"}, {"nprobe"}),
            "HNSW": ({"M", "efConstruction"}, {"ef"}),
        }[self.type]
        for given, ok, what in (
            (self.build_params, allowed[0], "build"),
            (self.search_params, allowed[1], "search"),
        ):
            for key, value in given.items():
                if key not in ok:
                    raise InvalidInput(f"{self.type} takes no {what} parameter {key!r}")
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65536:
                    raise InvalidInput(f"{self.type} {key} must be an integer in 1..65536")
        n = self.source_partitions
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_SOURCE_PARTITIONS:
            raise InvalidInput(
                f"source_partitions must be an integer in 0..{MAX_SOURCE_PARTITIONS} (0 = none)"
            )
        return self


@dataclass(frozen=True)
class VectorAttrs:
    """Scalar fields stored beside each vector, used by filters."""

    source: str = ""
    tags: tuple[str, ...] = ()
    created_at: int = 0  # unix seconds


@dataclass(frozen=True)
class SearchFilter:
    """Typed, validated filter values; `milvus_filter.build_filter` renders them."""

    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # an image matches when it has any of them
    created_from: int | None = None
    created_to: int | None = None
    exclude_ids: tuple[int, ...] = ()
    # Only these ids (resolved from the SQL store beforehand); None = any id.
    only_ids: tuple[int, ...] | None = None

    def is_empty(self) -> bool:
        return not (
            self.sources
            or self.tags
            or self.exclude_ids
            or self.only_ids is not None
            or self.created_from is not None
            or self.created_to is not None
        )

    def matches(self, image_id: int, attrs: VectorAttrs) -> bool:
        """Reference semantics, used by the in-memory store and the tests."""
        if self.sources and attrs.source not in self.sources:
            return False
        if self.tags and not set(self.tags) & set(attrs.tags):
            return False
        if self.created_from is not None and attrs.created_at < self.created_from:
            return False
        if self.created_to is not None and attrs.created_at > self.created_to:
            return False
        if self.only_ids is not None and image_id not in self.only_ids:
            return False
        return image_id not in self.exclude_ids


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model_name: str
    dim: int
    index: IndexSpec
    count: int


class VectorStore(Protocol):
    """Vectors keyed by image id, one collection per library and model."""

    # True when array filters (tags) cost a pass over every row in Python
    # (Milvus Lite): searches then resolve tags in SQL (operations.vector_filter).
    slow_array_filters: bool

    def ping(self) -> None: ...
    def create_collection(self, name: str, dim: int, model_name: str, index: IndexSpec) -> None: ...
    def has_collection(self, name: str) -> bool: ...
    def describe(self, name: str) -> CollectionInfo: ...
    def describe_meta(self, name: str) -> CollectionInfo: ...
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
    ) -> int:
        """Write vectors by id; `visible`: return once searches see them."""

    def delete(self, name: str, ids: Sequence[int], *, visible: bool = True) -> None:
        """Delete by id; `visible`: return once searches no longer see them."""

    def flush(self, name: str, bulk: bool = False) -> None:
        """Seal what was written; returns once searches see it (`wait_visible`)."""

    def wait_visible(self, name: str) -> None:
        """Return once this process's writes to `name` are visible to every later search."""

    def existing_ids(self, name: str, ids: Sequence[int]) -> set[int]: ...
    def count(self, name: str) -> int: ...
    def search(
        self, name: str, vectors: np.ndarray, top_k: int, flt: SearchFilter | None = None
    ) -> list[list[Hit]]: ...
    def range_search(
        self, name: str, vector: np.ndarray, min_score: float, limit: int, flt: SearchFilter | None = None
    ) -> list[Hit]: ...
    def close(self) -> None: ...


def check_model(info: CollectionInfo, model_name: str, dim: int) -> None:
    """Refuse to mix vectors of different models in one collection."""
    if info.dim != dim or info.model_name != model_name:
        raise Conflict(
            f"collection {info.name!r} was built with model {info.model_name} ({info.dim}-d); "
            f"the service runs {model_name} ({dim}-d): use another collection or model",
            collection=info.name,
        )


class InMemoryVectorStore:
    """Exact inner-product search in numpy; the reference implementation."""

    def __init__(self) -> None:
        self._collections: dict[str, dict] = {}

    def _get(self, name: str) -> dict:
        validate_name(name)
        if name not in self._collections:
            raise NotFound(f"collection {name!r} does not exist", collection=name)
        return self._collections[name]

    slow_array_filters = False

    def ping(self) -> None:
        return None

    def create_collection(self, name: str, dim: int, model_name: str, index: IndexSpec) -> None:
        validate_name(name)
        if name in self._collections:
            check_model(self.describe(name), model_name, dim)
            return
        self._collections[name] = {
            "dim": dim,
            "model": model_name,
            "index": index.check(),
            "vectors": {},
            "attrs": {},
        }

    def has_collection(self, name: str) -> bool:
        return validate_name(name) in self._collections

    def describe(self, name: str) -> CollectionInfo:
        c = self._get(name)
        return CollectionInfo(name, c["model"], c["dim"], c["index"], len(c["vectors"]))

    describe_meta = describe

    def get_vectors(self, name, ids) -> dict[int, np.ndarray]:
        c = self._get(name)
        return {int(i): c["vectors"][int(i)] for i in ids if int(i) in c["vectors"]}

    def list_collections(self) -> list[str]:
        return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        self._collections.pop(validate_name(name), None)

    def upsert(self, name, ids, vectors, attrs=None, *, visible: bool = True) -> int:
        c = self._get(name)
        vectors = np.asarray(vectors, dtype=np.float32)
        for i, image_id in enumerate(ids):
            c["vectors"][int(image_id)] = vectors[i]
            c["attrs"][int(image_id)] = attrs[i] if attrs else VectorAttrs()
        return len(ids)

    def wait_visible(self, name: str) -> None:
        return None  # every write is visible at once

    def flush(self, name, bulk: bool = False) -> None:
        self._get(name)

    def delete(self, name, ids, *, visible: bool = True) -> None:
        c = self._get(name)
        for image_id in ids:
            c["vectors"].pop(int(image_id), None)
            c["attrs"].pop(int(image_id), None)

    def existing_ids(self, name, ids) -> set[int]:
        c = self._get(name)
        return {int(i) for i in ids if int(i) in c["vectors"]}

    def count(self, name) -> int:
        return len(self._get(name)["vectors"])

    def _scored(self, c: dict, vector: np.ndarray, flt: SearchFilter | None) -> list[Hit]:
        ids = [i for i in c["vectors"] if flt is None or flt.matches(i, c["attrs"][i])]
        if not ids:
            return []
        scores = np.stack([c["vectors"][i] for i in ids]) @ np.asarray(vector, np.float32)
        order = sorted(range(len(ids)), key=lambda k: (-scores[k], ids[k]))
        return [Hit(ids[k], float(scores[k])) for k in order]

    def search(self, name, vectors, top_k, flt=None) -> list[list[Hit]]:
        c = self._get(name)
        return [self._scored(c, v, flt)[:top_k] for v in np.atleast_2d(vectors)]

    def range_search(self, name, vector, min_score, limit, flt=None) -> list[Hit]:
        c = self._get(name)
        return [h for h in self._scored(c, vector, flt) if h.score >= min_score][:limit]

    def close(self) -> None:
        return None
