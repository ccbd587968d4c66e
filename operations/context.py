"""The services an operation works with, built once and passed in."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import Settings
from operations.domain import IndexSpec, check_model
from operations.encoding.base import Encoder
from operations.errors import Conflict, NotFound
from operations.relevance.calibration_store import CalibrationBook, CalibrationState
from operations.stores.image_base import ImageStore
from operations.stores.job_store import JobStore
from operations.stores.sql_writer_leases import WriterLeases
from operations.stores.vector_base import VectorStore

if TYPE_CHECKING:
    from operations.aliases import AliasBook
    from operations.row_cleanup import RowCleanup
    from operations.serving import Serving
    from operations.vector_cleanup import VectorCleanup


class EncoderRegistry:
    """The default model plus any extra models, loaded on first use.

    Each collection records its model; a search on it is answered by that
    model, so collections of different models can be served side by side.
    """

    def __init__(self, default: Encoder, loaders: dict | None = None) -> None:
        self.default = default
        self._loaded: dict[str, Encoder] = {default.model_name: default}
        self._loaders = dict(loaders or {})  # name -> zero-arg callable returning an Encoder
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(set(self._loaded) | set(self._loaders))

    def get(self, model_name: str) -> Encoder:
        with self._lock:
            if model_name not in self._loaded:
                if model_name not in self._loaders:
                    raise Conflict(
                        f"model {model_name!r} is not configured on this server "
                        f"(available: {', '.join(self.names())})",
                        model=model_name,
                    )
                self._loaded[model_name] = self._loaders[model_name]()
            return self._loaded[model_name]


@dataclass
class Services:
    settings: Settings
    encoders: EncoderRegistry
    vectors: VectorStore
    images: ImageStore
    jobs: JobStore | None = None
    extra: dict = field(default_factory=dict)
    # Calibrations of the models served (None: every model uncalibrated).
    calibrations: CalibrationBook | None = None
    # The collection names clients use -> the collections answering them (operations.aliases);
    # None: every name is its own collection (no SQL store to keep the table in).
    aliases: AliasBook | None = None
    # Leases of writers that are not jobs (a command-line load), which the automatic repair of
    # rows without their vector leaves alone; None: no SQL store to keep them in.
    writers: WriterLeases | None = None
    _serving: Serving | None = field(default=None, init=False, repr=False)
    _serving_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _cleanup: VectorCleanup | None = field(default=None, init=False, repr=False)
    _row_cleanup: RowCleanup | None = field(default=None, init=False, repr=False)

    @property
    def encoder(self) -> Encoder:
        return self.encoders.default

    @property
    def serving(self) -> Serving:
        """The batchers and the query cache of this process (built on first use)."""
        if self._serving is None:
            from operations.serving import Serving

            with self._serving_lock:
                if self._serving is None:
                    self._serving = Serving(self.settings, self.vectors)
        return self._serving

    def close_serving(self) -> None:
        """Stop the batchers (queued requests fail with Overloaded) and the cleanups."""
        if self._serving is not None:
            self._serving.close()
            self._serving = None
        if self._row_cleanup is not None:
            self._row_cleanup.close()
            self._row_cleanup = None
        if self._cleanup is not None:
            self._cleanup.close()
            self._cleanup = None

    @property
    def vector_cleanup(self) -> VectorCleanup:
        """Deletes, once Milvus answers, vectors a failed add may have left (built on first use)."""
        if self._cleanup is None:
            from operations.vector_cleanup import VectorCleanup

            with self._serving_lock:
                if self._cleanup is None:
                    self._cleanup = VectorCleanup(self.vectors)
        return self._cleanup

    @property
    def row_cleanup(self) -> RowCleanup:
        """Removes, once the SQL store answers, rows a failed add could not take back (built on first use)."""
        if self._row_cleanup is None:
            from operations.row_cleanup import RowCleanup

            cleanup = self.vector_cleanup
            with self._serving_lock:
                if self._row_cleanup is None:
                    self._row_cleanup = RowCleanup(self.images, cleanup)
        return self._row_cleanup

    def forget_pending_deletes(self, collection: str) -> None:
        """Drop the cleanups' pending deletes for `collection` (dropped, or made anew).

        A new collection's image ids start again at 1: a late delete meant for the one
        before would remove a new image's row or vector. Cleanups not built have none.
        """
        for cleanup in (self._row_cleanup, self._cleanup):
            if cleanup is not None:
                cleanup.forget(collection)

    def default_index(self) -> IndexSpec:
        s = self.settings
        return IndexSpec(
            s.index_type,
            dict(s.index_params),
            dict(s.search_params),
            s.source_partitions,
            time_partitions=None if s.time_partitions == "none" else s.time_partitions,
        ).check(allow_auto=True)

    def store_name(self, collection: str, write: bool = False) -> str:
        """The collection `collection` names now, resolved once (operations.aliases.StoreName):
        what one request passes on, so all its steps use the same collection."""
        if self.aliases is None:
            return collection
        return self.aliases.resolve(collection, write=write)

    def encoder_for(self, collection: str) -> Encoder:
        """The encoder of the model `collection` was built with (404 if unknown)."""
        info = self.vectors.describe_meta(collection)
        encoder = self.encoders.get(info.model_name)
        check_model(info, encoder.model_name, encoder.dim)
        return encoder

    def calibration_of(self, model_name: str) -> CalibrationState:
        """The model's calibration, or None and the reason (see operations.relevance)."""
        if self.calibrations is None:
            return CalibrationState(None, "no calibration store is configured")
        return self.calibrations.get(model_name)

    def ensure_collection(
        self,
        collection: str,
        encoder: Encoder | None = None,
        index: IndexSpec | None = None,
        expected_vectors: int = 0,
    ) -> Encoder:
        """Create the collection in both stores if needed; refuse a model mismatch.

        expected_vectors: how many vectors the caller is about to write (a load knows its
        split's size), which an AUTO index is chosen for.
        """
        encoder = encoder or self.encoder
        spec = (index or self.default_index()).check(allow_auto=True)
        spec = spec.resolve(expected_vectors, self.settings.auto_index_flat_below)
        self.vectors.create_collection(collection, encoder.dim, encoder.model_name, spec)
        self.images.ensure_collection(collection)
        return encoder

    def require_collection(self, collection: str) -> None:
        if not self.vectors.has_collection(collection):
            raise NotFound(f"collection {collection!r} does not exist", collection=collection)


def resolve_under(root: Path, relative: str) -> Path:
    """`relative` inside `root` (real path, symlinks followed), or BadRequest: see operations.data_root."""
    from operations.data_root import resolve_under as resolve

    return resolve(root, relative)
