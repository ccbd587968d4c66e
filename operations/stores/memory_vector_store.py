"""An exact in-memory vector store: the reference for congruence tests and fast unit tests.

The Milvus store (`milvus_store.py`) is what users run; this one answers what an exact search
over the same vectors must answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from operations.domain import (
    CollectionInfo,
    Hit,
    IndexSpec,
    SearchFilter,
    VectorAttrs,
    check_model,
    check_written_model,
    partition_period,
    period_partition,
)
from operations.errors import InvalidInput, NotFound
from operations.names import validate_name


class InMemoryVectorStore:
    """Exact inner-product search in numpy; the reference implementation."""

    def __init__(self) -> None:
        self._collections: dict[str, dict] = {}
        self._generations: dict[str, int] = {}

    def _advance(self, name: str) -> None:
        self._generations[name] = self._generations.get(name, 0) + 1

    def write_generation(self, name: str) -> int:
        return self._generations.get(name, 0)

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
            "partitions": {},  # id -> its time partition (time-partitioned collections)
        }

    def has_collection(self, name: str) -> bool:
        return validate_name(name) in self._collections

    def describe(self, name: str) -> CollectionInfo:
        c = self._get(name)
        return CollectionInfo(name, c["model"], c["dim"], c["index"], len(c["vectors"]))

    def describe_meta(self, name: str, fresh: bool = False) -> CollectionInfo:
        return self.describe(name)  # one process: always what the collection is now

    def incarnation(self, name: str, fresh: bool = False) -> int | None:
        return None  # one process: its own drops forget its cleanups

    def get_vectors(self, name, ids) -> dict[int, np.ndarray]:
        c = self._get(name)
        return {int(i): c["vectors"][int(i)] for i in ids if int(i) in c["vectors"]}

    def list_collections(self) -> list[str]:
        return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        self._collections.pop(validate_name(name), None)
        self._advance(name)

    def upsert(
        self,
        name,
        ids,
        vectors,
        attrs=None,
        *,
        visible: bool = True,
        model: str | None = None,
        incarnation=None,
    ) -> int:
        c = self._get(name)
        check_written_model(self.describe_meta(name), model, incarnation)
        vectors = np.asarray(vectors, dtype=np.float32)
        for i, image_id in enumerate(ids):
            c["vectors"][int(image_id)] = vectors[i]
            c["attrs"][int(image_id)] = attrs[i] if attrs else VectorAttrs()
            if c["index"].time_partitions:
                # One copy per id, in its period's partition (the Milvus store deletes the id
                # from every partition before it inserts).
                c["partitions"][int(image_id)] = period_partition(
                    c["attrs"][int(image_id)].created_at, c["index"].time_partitions
                )
        self._advance(name)
        return len(ids)

    def time_partitions(self, name: str) -> list[str]:
        """The time partitions holding rows (Milvus also keeps emptied ones until dropped)."""
        return sorted(set(self._get(name)["partitions"].values()))

    def drop_partitions(self, name: str, partitions: Sequence[str]) -> None:
        c = self._get(name)
        for p in partitions:
            if partition_period(p) is None:
                raise InvalidInput(f"{p!r} is not a time partition")
        gone = [i for i, p in c["partitions"].items() if p in set(partitions)]
        self.delete(name, gone)

    def wait_visible(self, name: str) -> None:
        return None  # every write is visible at once

    def flush(self, name, bulk: bool = False) -> None:
        self._get(name)

    def delete(self, name, ids, *, visible: bool = True) -> None:
        c = self._get(name)
        for image_id in ids:
            c["vectors"].pop(int(image_id), None)
            c["attrs"].pop(int(image_id), None)
            c["partitions"].pop(int(image_id), None)
        self._advance(name)

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

    def range_search(self, name, vector, min_score, limit, flt=None, max_score=None) -> list[Hit]:
        c = self._get(name)
        return [
            h
            for h in self._scored(c, vector, flt)
            if h.score >= min_score and (max_score is None or h.score <= max_score)
        ][:limit]

    def range_pages(self, name, vector, min_score, page_size, flt=None) -> Iterator[list[Hit]]:
        hits = self.range_search(name, vector, min_score, 2**62, flt)
        for start in range(0, len(hits), page_size):
            yield hits[start : start + page_size]

    def close(self) -> None:
        return None
