"""Vector store over pymilvus' MilvusClient: Milvus Lite file or server URI.

Why the choices here:
- The primary key is the image id (no auto id), so a vector and its SQL row
  share one key and a re-run load can upsert without duplicates.
- Metric IP on L2-normalised vectors: the score is the cosine, best first.
- Consistency "Adaptive" by default, from what the 2.3 server does
  (tests/MILVUS_NOTES.md, "Reading your own writes"): a Bounded search right
  after a write misses it, "Session" is not reliable either, and a Strong read
  waits for the next time tick. One Strong read of the collection makes the
  query nodes consume everything up to a time after the write, and Bounded
  searches after it see the write. So: every read is Bounded, and every
  operation that writes ends with `wait_visible` (one Strong probe, paid by
  the writer's request alone): when an add or delete returns, the very next
  search, by anyone in this process, sees it, and readers never wait for a
  time tick. The probe moves the query node itself forward, so the next
  search of every other process (another API replica) sees the write too
  (bench/README.md, "Many replicas"); a writer that does not probe shows
  within Milvus' graceful time. MILVUS_CONSISTENCY=Strong makes every read
  Strong; a fixed weaker level skips the probe (the operator chose
  staleness). Milvus Lite reads its own writes at once and needs no probe.
  The probe covers the query replica it hit: one replica (the default) is
  every read; with several use Strong.
- Every call carries `timeout=`; a dead server otherwise hangs for minutes. A
  public method is one store call with one deadline (operations/deadline.py):
  the collection description, the load before a search and pymilvus' own
  retries all share it. On a server, each call runs on a small thread pool
  and is abandoned (503) when the deadline passes, since pymilvus' retry loop
  gives each new attempt the full timeout again.
- The model name and dim live in collection properties, so a collection can
  refuse vectors from another model.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import numpy as np

from operations import deadline
from operations.bounds import check_int64
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
from operations.errors import Conflict, DependencyUnavailable, InvalidInput, NotFound, ServiceError
from operations.names import validate_name
from operations.stores.milvus_filter import build_filter, ids_filter
from operations.stores.outage import OutageLog
from operations.stores.pymilvus_guard import DataType, MilvusClient, MilvusException, ParamError
from operations.stores.vector_base import MAX_STORE_HITS

log = logging.getLogger(__name__)
T = TypeVar("T")

# One insert message must stay under Milvus' 64 MB limit; 16 MB leaves room
# for protobuf overhead and the scalar fields.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONSISTENCY_LEVELS = ("Adaptive", "Strong", "Session", "Bounded", "Eventually")
MAX_TAGS = 64
# Ids returned within this much above a range page's lowest score are excluded
# from the next page by id (its window starts this much higher), so a boundary
# score the server rounds differently is neither lost nor repeated.
_TIE_BAND = 1e-6
PROP_MODEL, PROP_DIM, PROP_INDEX = "cnclip.model", "cnclip.dim", "cnclip.index"
_NOT_FOUND_HINTS = ("not found", "not exist", "doesn't exist", "can't find")
_CONTENT_HINTS = (
    "failed to create expr plan",
    "cannot parse expression",
    "too large to convert",
    "out of range",
)
STORE = "milvus"
# Milvus calls of one process in flight at once (request threads plus a load's stages).
CALL_THREADS = 32
# How long a search trusts this process's description of a collection (model, dim, index)
# before asking the server again: another replica may drop the collection and make it again
# under the same name, for another model or index. Writes ask on every write (upsert).
DESCRIPTION_RECHECK_S = 5.0
# gRPC options of a Milvus Lite connection. Lite serves gRPC from a thread of this process with
# gRPC's default server policy (at most one ping without data in 5 minutes), while pymilvus
# pings every 10 s even with no call in flight: an idle connection is closed after about a minute
# with GOAWAY "too_many_pings" (an error line from gRPC on stderr, and a reconnect on the next
# call). A ping to a server in this same process guards against nothing, so none is sent (a
# keepalive time of INT_MAX is gRPC's "off"). A server URI keeps pymilvus' keepalive: Milvus
# permits it, and it finds a dead connection to another machine.
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}


def _classify(exc: Exception, name: str | None) -> ServiceError:
    text = str(exc)
    if name and any(h in text.lower() for h in _NOT_FOUND_HINTS) and "collection" in text.lower():
        return NotFound(f"collection {name!r} does not exist", collection=name)
    # Milvus refusing a value for its content is the caller's error (4xx), not
    # an outage: 503 is kept for a server that cannot be reached or timed out.
    if isinstance(exc, ParamError) or any(h in text.lower() for h in _CONTENT_HINTS):
        return InvalidInput(
            f"milvus refused the request: {text.splitlines()[0][:300] if text else type(exc).__name__}"
        )
    return DependencyUnavailable("milvus", text.splitlines()[0][:300] if text else type(exc).__name__)


@dataclasses.dataclass(frozen=True)
class ImportTask:
    """One server-side import task: `state` is "pending", "started", "persisted",
    "completed" or "failed" (its rows are then not imported: a failed task is cleaned up)."""

    task_id: int
    state: str
    rows: int
    files: tuple[str, ...]
    reason: str

    @property
    def done(self) -> bool:
        return self.state in ("completed", "failed")


_IMPORT_STATES = {0: "pending", 1: "failed", 2: "started", 5: "persisted", 6: "completed", 7: "failed"}


def _import_task(st: object) -> ImportTask:
    infos = getattr(st, "infos", {}) or {}
    files = tuple(f for f in str(infos.get("files", "")).split(",") if f)
    return ImportTask(
        task_id=int(getattr(st, "task_id")),  # noqa: B009 - BulkInsertState, typed as object here
        state=_IMPORT_STATES.get(int(getattr(st, "state")), "unknown"),  # noqa: B009
        rows=int(getattr(st, "row_count", 0) or 0),
        files=files,
        reason=str(getattr(st, "failed_reason", "") or ""),
    )


_answered = threading.local()  # .n: server calls this thread got an answer to


def _incarnation(desc: dict, lite: bool) -> int | None:
    # Milvus Lite answers 0 for every collection: no identity there.
    return None if lite else int(desc.get("collection_id") or 0) or None


def _one_deadline(method: Callable[..., T]) -> Callable[..., T]:
    """The method and every Milvus call it makes share one deadline. Its outcome
    feeds the outage log (outermost methods only; one answered from the cache
    alone says nothing about the server)."""

    @functools.wraps(method)
    def wrapper(self: MilvusVectorStore, *args, **kwargs) -> T:
        if deadline.current(STORE) is not None:
            return method(self, *args, **kwargs)
        answered = getattr(_answered, "n", 0)
        with deadline.store_call(STORE, self.timeout_s):
            try:
                result = method(self, *args, **kwargs)
            except DependencyUnavailable as exc:
                self.outage.failed(exc.message)
                raise
        if getattr(_answered, "n", 0) != answered:
            self.outage.succeeded()
        return result

    return wrapper


class MilvusVectorStore:
    """`VectorStore` backed by Milvus (Lite file or server)."""

    def __init__(
        self,
        uri: str,
        token: str = "",
        timeout_s: float = 10.0,
        consistency: str = "Adaptive",
        shards: int = 1,
    ) -> None:
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {CONSISTENCY_LEVELS}")
        if not 1 <= shards <= 16:
            raise ValueError("shards must be 1 to 16")
        self.uri = uri
        self.consistency = consistency
        # Shards of collections this store creates (MILVUS_SHARDS; Milvus Lite ignores it).
        self.shards = shards
        self.timeout_s = timeout_s
        self._token = token
        self.outage = OutageLog(STORE, log)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._client: MilvusClient | None = None
        self._client_lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._loaded: set[str] = set()
        self._info_cache: dict[str, CollectionInfo] = {}
        self._described_at: dict[str, float] = {}  # time.monotonic() of each description
        # Descriptions answered out of order must not put an older one back: each is numbered
        # when asked, and stored only if none asked later was stored first.
        self._describe_lock = threading.Lock()
        self._describe_seq = 0
        self._stored_seq: dict[str, int] = {}
        self.description_recheck_s = DESCRIPTION_RECHECK_S
        # Time partitions known to exist, per collection (created on demand by upserts).
        self._partitions: dict[str, set[str]] = {}
        # Writes per collection not yet known to be visible to Bounded reads.
        self._writes: dict[str, int] = {}
        self._visible: dict[str, int] = {}
        self._writes_lock = threading.Lock()
        self._generations: dict[str, int] = {}
        # The level of the latest read and of the latest visibility probe per
        # collection (tests assert on them; they cost nothing to keep).
        self.last_read_level: dict[str, str] = {}
        self.probes: dict[str, int] = {}

    def _wrote(self, name: str) -> None:
        with self._writes_lock:
            self._writes[name] = self._writes.get(name, 0) + 1

    def _advance(self, name: str) -> None:
        with self._writes_lock:
            self._generations[name] = self._generations.get(name, 0) + 1

    def write_generation(self, name: str) -> int:
        """Advanced when a write of this process to `name` starts, ends or becomes visible."""
        with self._writes_lock:
            return self._generations.get(name, 0)

    def _read_level(self, name: str) -> str:
        """The consistency level for a read of `name` (see the module docstring)."""
        level = "Bounded" if self.consistency == "Adaptive" else self.consistency
        self.last_read_level[name] = level
        return level

    @_one_deadline
    def wait_visible(self, name: str) -> None:
        """Return once this process's writes to `name` are visible to Bounded reads.

        One Strong query (it waits until the query nodes have consumed the
        collection's channels up to now, ~one time tick); nothing to do on
        Milvus Lite, with a fixed consistency level, or when nothing was written
        since the last probe.
        """
        if self.is_lite or self.consistency != "Adaptive":
            return
        with self._writes_lock:
            written = self._writes.get(name, 0)
            if written == self._visible.get(name, 0):
                return
        self._ensure_loaded(name)
        self._call(
            lambda c: c.query(
                name,
                filter="id in [0]",
                output_fields=["id"],
                limit=1,
                consistency_level="Strong",
                timeout=self.timeout,
            ),
            name,
        )
        with self._writes_lock:
            # Writes that raced with the probe may be later than its timestamp:
            # only those before it are known visible.
            self._visible[name] = max(self._visible.get(name, 0), written)
            self.probes[name] = self.probes.get(name, 0) + 1
            self._generations[name] = self._generations.get(name, 0) + 1

    def _fresh_deadline(self) -> AbstractContextManager[deadline.Deadline]:
        """A new MILVUS_TIMEOUT_S for the calls after a long wait (a flush, an index build)."""
        return deadline.store_call(STORE, self.timeout_s, own=True)

    @property
    def timeout(self) -> float:
        """Seconds the Milvus call in progress has left (MILVUS_TIMEOUT_S outside a call)."""
        return deadline.seconds_left(STORE, self.timeout_s)

    # -- connection -------------------------------------------------------
    @property
    def is_lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://", "tcp://", "grpc://"))

    @property
    def slow_array_filters(self) -> bool:
        # Lite evaluates array filters row by row in Python; a server uses its index
        # (bench/README.md, "Filter").
        return self.is_lite

    def _connect(self, d: deadline.Deadline | None = None) -> MilvusClient:
        if self._client is not None:
            return self._client
        d = d or deadline.Deadline(STORE, time.monotonic() + self.timeout_s, self.timeout_s)
        if not self._client_lock.acquire(timeout=max(0.0, d.left())):
            raise DependencyUnavailable(STORE, f"no connection within {d.timeout_s:g} s")
        try:
            if self._client is None:
                options: dict[str, object] = {}
                if self.is_lite:
                    Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
                    options = {"grpc_options": LITE_GRPC_OPTIONS}
                try:
                    self._client = MilvusClient(
                        uri=self.uri, token=self._token, timeout=d.left_or_raise(), **options
                    )
                except ServiceError:
                    raise
                except Exception as exc:  # connection refused, lite file locked, ...
                    raise DependencyUnavailable("milvus", str(exc).splitlines()[0][:300]) from exc
            return self._client
        finally:
            self._client_lock.release()

    def _run(self, fn: Callable[[MilvusClient], T], client: MilvusClient, d: deadline.Deadline) -> T:
        """`fn(client)`, given up when the deadline passes.

        Milvus Lite runs in this process and is called directly. A server call
        runs on the pool with this thread's context (so `self.timeout` inside
        `fn` reads the same deadline) and is left to finish on its own when
        the deadline passes first (pymilvus restarts the full timeout for each
        of its retries).
        """
        if self.is_lite:
            return fn(client)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="milvus-call")
            pool = self._pool
        future = pool.submit(contextvars.copy_context().run, fn, client)
        try:
            return future.result(timeout=d.left_or_raise())
        except TimeoutError:
            if not future.done():
                future.cancel()
                raise DependencyUnavailable(STORE, f"no answer within {d.timeout_s:g} s") from None
            raise

    def _call(
        self, fn: Callable[[MilvusClient], T], name: str | None = None, wait_s: float | None = None
    ) -> T:
        """One Milvus call within the current deadline (`wait_s`: its own, longer one)."""
        with deadline.store_call(STORE, wait_s or self.timeout_s, own=wait_s is not None) as d:
            try:
                result = self._run(fn, self._connect(d), d)
                _answered.n = getattr(_answered, "n", 0) + 1
                return result
            except DependencyUnavailable:
                self._loaded.clear()
                raise
            except ServiceError:
                raise
            except MilvusException as exc:
                err = _classify(exc, name)
                if isinstance(err, DependencyUnavailable):
                    # A server restart invalidates what we knew about load state.
                    self._loaded.clear()
                elif isinstance(err, NotFound) and name:
                    # Dropped by another process (a replica): what this one cached of it is void,
                    # and a collection created again under the name is described afresh.
                    self._loaded.discard(name)
                    self._info_cache.pop(name, None)
                    self._partitions.pop(name, None)
                raise err from exc
            except Exception as exc:  # grpc errors, socket errors
                self._loaded.clear()
                raise DependencyUnavailable("milvus", f"{type(exc).__name__}: {exc}"[:300]) from exc

    @_one_deadline
    def ping(self) -> None:
        self._call(lambda c: c.list_collections(timeout=self.timeout))

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        with self._client_lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # closing a dead connection must not fail shutdown
                    pass
                self._client = None

    # -- collections ------------------------------------------------------
    @_one_deadline
    def create_collection(self, name: str, dim: int, model_name: str, index: IndexSpec) -> None:
        validate_name(name)
        index.check()
        # One creation at a time in this process: a request and a load job
        # creating the same collection at once both saw it missing, and the
        # second creation failed ("File exists" on Milvus Lite) as a 503.
        with self._create_lock:
            self._create_collection(name, dim, model_name, index)

    def _create_collection(self, name: str, dim: int, model_name: str, index: IndexSpec) -> None:
        if self.has_collection(name):
            self._repair_index(name, index)
            with self._fresh_deadline():  # a repair may have waited long for an index build
                check_model(self.describe_meta(name, fresh=True), model_name, dim)
            return
        schema = MilvusClient.create_schema(
            auto_id=False,
            enable_dynamic_field=False,
            description=json.dumps({"model": model_name, "dim": dim}),
        )
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        # With source_partitions, `source` is the partition key: Milvus routes
        # each row to hash(source) % n and a source filter prunes the others.
        schema.add_field(
            "source",
            DataType.VARCHAR,
            max_length=256,
            **({"is_partition_key": True} if index.source_partitions else {}),
        )
        # An ARRAY, not a delimited string: the 2.3 server has no infix LIKE.
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_TAGS, max_length=64
        )
        schema.add_field("created_at", DataType.INT64)

        def create(c: MilvusClient) -> None:
            params = c.prepare_index_params()
            params.add_index(
                field_name="vector", index_type=index.type, metric_type="IP", params=dict(index.build_params)
            )
            c.create_collection(
                name,
                schema=schema,
                consistency_level="Bounded" if self.consistency == "Adaptive" else self.consistency,
                timeout=self.timeout,
                num_shards=self.shards,
                **({"num_partitions": index.source_partitions} if index.source_partitions else {}),
            )
            # The index at once: a collection without one can never load (and
            # _repair_index mends one that a failure left here without it).
            # Not waited for: an empty collection has nothing to build, and
            # pymilvus' wait asks for a timestamp that Milvus Lite does not
            # implement (a logged traceback and ~4 s of retries a collection).
            c.create_index(name, params, timeout=self.timeout, sync=False)
            c.alter_collection_properties(
                name,
                properties={
                    PROP_MODEL: model_name,
                    PROP_DIM: str(dim),
                    PROP_INDEX: json.dumps(
                        {
                            "type": index.type,
                            "build": index.build_params,
                            "search": index.search_params,
                            "source_partitions": index.source_partitions,
                            "auto": index.auto,
                            "time_partitions": index.time_partitions,
                        }
                    ),
                },
                timeout=self.timeout,
            )
            if not self.is_lite:
                # On a server, loading a new collection takes seconds, most of it
                # the query coordinator's scheduling, not data (bench/README.md,
                # "Results of 2026-12-01"). Writes do not need a loaded collection,
                # so the load runs on the server while a bulk load writes; the
                # first read (or the bulk load's final flush) waits for it
                # (_ensure_loaded).
                c.load_collection(name, timeout=self.timeout, _async=True)

        self._call(create, name)
        self._info_cache.pop(name, None)
        if self.is_lite:
            self._ensure_loaded(name)

    @_one_deadline
    def has_collection(self, name: str) -> bool:
        validate_name(name)
        return bool(self._call(lambda c: c.has_collection(name, timeout=self.timeout), name))

    @_one_deadline
    def describe_meta(self, name: str, fresh: bool = False) -> CollectionInfo:
        """Model, dim and index of a collection, count 0. Cached: they never change while the
        collection lives; on a server the description is asked again after
        DESCRIPTION_RECHECK_S, or now with `fresh`, in case another process made it again."""
        if fresh and not self.is_lite:
            return self._describe_afresh(name)
        info = self._info_cache.get(name)
        if info is not None and (
            self.is_lite or time.monotonic() - self._described_at.get(name, 0.0) < self.description_recheck_s
        ):
            return info
        if info is None and not self.has_collection(name):
            raise NotFound(f"collection {name!r} does not exist", collection=name)
        return self._describe_afresh(name)

    def _describe_afresh(self, name: str) -> CollectionInfo:
        """Ask the server for the description and cache it; a collection made again since the
        last description (another incarnation) starts with nothing this process knew of the
        one before: not loaded, no partitions, no cached results."""
        with self._describe_lock:
            self._describe_seq += 1
            seq = self._describe_seq
            # Marked before the call: other threads go on with the cached description meanwhile.
            self._described_at[name] = time.monotonic()
        desc = self._call(lambda c: c.describe_collection(name, timeout=self.timeout), name)
        info = self._info_from(name, desc)
        with self._describe_lock:
            if seq < self._stored_seq.get(name, 0):
                return info  # a description asked later is stored: this one is not cached
            self._stored_seq[name] = seq
            before = self._info_cache.get(name)
            self._info_cache[name] = info
        if before is not None and before.incarnation != info.incarnation:
            log.info(
                "collection %r was made again by another process (model %s, was %s): described afresh",
                name,
                info.model_name,
                before.model_name,
            )
            self._loaded.discard(name)
            self._partitions.pop(name, None)
            self._advance(name)
        return info

    def _info_from(self, name: str, desc: dict) -> CollectionInfo:
        props = desc.get("properties") or {}
        try:
            described = json.loads(desc.get("description") or "{}")
        except ValueError:
            described = {}
        model = props.get(PROP_MODEL) or described.get("model") or "unknown"
        dim = next((f["params"].get("dim") for f in desc["fields"] if f["name"] == "vector"), None)
        idx = json.loads(props.get(PROP_INDEX) or '{"type": "FLAT"}')
        return CollectionInfo(
            name,
            model,
            int(dim or described.get("dim") or 0),
            IndexSpec(
                idx.get("type", "FLAT"),
                idx.get("build", {}),
                idx.get("search", {}),
                int(idx.get("source_partitions", 0)),
                bool(idx.get("auto", False)),
                idx.get("time_partitions") or None,
            ),
            0,
            _incarnation(desc, self.is_lite),
        )

    def incarnation(self, name: str, fresh: bool = False) -> int | None:
        """The server's collection id (see VectorStore); Milvus Lite has none (it gives 0)."""
        if self.is_lite:
            return None
        if not fresh:
            info = self._info_cache.get(name)
            return info.incarnation if info is not None else None
        return self.describe_meta(name, fresh=True).incarnation

    @_one_deadline
    def describe(self, name: str) -> CollectionInfo:
        meta = self.describe_meta(name)
        return CollectionInfo(meta.name, meta.model_name, meta.dim, meta.index, self.count(name))

    @_one_deadline
    def list_collections(self) -> list[str]:
        return sorted(self._call(lambda c: c.list_collections(timeout=self.timeout)))

    @_one_deadline
    def drop_collection(self, name: str) -> None:
        validate_name(name)
        self._advance(name)
        self._call(lambda c: c.drop_collection(name, timeout=self.timeout), name)
        self._advance(name)
        self._loaded.discard(name)
        self._info_cache.pop(name, None)
        self._partitions.pop(name, None)

    @_one_deadline
    def point_alias(self, alias: str, collection: str) -> bool:
        """Make the Milvus alias `alias` name `collection` (created, or moved from another), for
        clients that read Milvus directly; the service itself follows the SQL name table
        (operations.aliases). False, and nothing done, while a collection still carries the
        name itself (Milvus refuses an alias named like a collection): a collection made before
        aliases keeps its name until it is dropped."""
        validate_name(alias)
        validate_name(collection)
        names = self._call(lambda c: c.list_collections(timeout=self.timeout))
        if alias in names:
            return False
        current = self._alias_target(alias)
        if current == collection:
            return True
        if current is None:
            self._call(lambda c: c.create_alias(collection, alias, timeout=self.timeout), collection)
        else:
            self._call(lambda c: c.alter_alias(collection, alias, timeout=self.timeout), collection)
        return True

    def _alias_target(self, alias: str) -> str | None:
        try:
            found = self._call(lambda c: c.describe_alias(alias, timeout=self.timeout))
        except (NotFound, InvalidInput):
            return None
        except DependencyUnavailable as exc:
            # Milvus answers "alias not found" as a plain error on some versions.
            if "not found" in exc.message.lower() or "not exist" in exc.message.lower():
                return None
            raise
        return str(found.get("collection_name")) if isinstance(found, dict) else None

    @_one_deadline
    def drop_alias(self, alias: str) -> None:
        """Drop the Milvus alias `alias` if there is one."""
        validate_name(alias)
        if self._alias_target(alias) is not None:
            self._call(lambda c: c.drop_alias(alias, timeout=self.timeout))

    @_one_deadline
    def alias_target(self, alias: str) -> str | None:
        """The collection the Milvus alias `alias` names, None without one."""
        return self._alias_target(alias)

    def _repair_index(self, name: str, index: IndexSpec) -> None:
        """Give the vector field its index if a failed creation left it without."""
        if self._call(lambda c: c.list_indexes(name, field_name="vector", timeout=self.timeout), name):
            return
        log.warning("collection %s has no vector index (an interrupted creation?); creating it", name)

        def create_index(c: MilvusClient) -> None:
            params = c.prepare_index_params()
            params.add_index(
                field_name="vector", index_type=index.type, metric_type="IP", params=dict(index.build_params)
            )
            # On a server, wait for the build (the rows may be many), so the
            # first search does not spend its timeout on it; Milvus Lite
            # builds at load and cannot answer pymilvus' wait (no AllocTimestamp).
            c.create_index(name, params, timeout=self.timeout, sync=not self.is_lite)

        self._call(create_index, name, wait_s=max(self.timeout_s, 120.0))

    def _ensure_loaded(self, name: str, wait_s: float | None = None) -> None:
        # A collection reopened from disk (or after a server restart) is
        # "released" and refuses searches until loaded again.
        if name in self._loaded:
            return
        self._call(lambda c: c.load_collection(name, timeout=self.timeout), name, wait_s=wait_s)
        self._loaded.add(name)

    def _ensure_writable(self, name: str) -> None:
        # A server takes writes into a collection that is loading or released;
        # Milvus Lite is kept loaded as before.
        if self.is_lite:
            self._ensure_loaded(name)

    # -- rows ---------------------------------------------------------------
    @_one_deadline
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
        """Write vectors by id; with `visible`, return once searches see them (else
        the caller ends its writes with `flush` or `wait_visible`). `model`, `incarnation`:
        see VectorStore."""
        vectors = np.asarray(vectors, dtype=np.float32)
        # A write asks the server what the collection is now (one call; searches trust their
        # description for DESCRIPTION_RECHECK_S): vectors of the old model written into a
        # collection another replica made again would stay wrong, not just be late.
        meta = self.describe_meta(name, fresh=True)
        check_written_model(meta, model, incarnation)
        if vectors.ndim != 2 or vectors.shape[1] != meta.dim or len(ids) != len(vectors):
            raise InvalidInput(f"vectors must be ({len(ids)}, {meta.dim}), got {vectors.shape}")
        self._advance(name)
        try:
            return self._upsert(name, meta, ids, vectors, attrs, visible)
        finally:
            self._advance(name)

    def _upsert(
        self,
        name: str,
        meta: CollectionInfo,
        ids: Sequence[int],
        vectors: np.ndarray,
        attrs: Sequence[VectorAttrs] | None,
        visible: bool,
    ) -> int:
        self._ensure_writable(name)
        rows_per_message = max(1, MAX_MESSAGE_BYTES // (meta.dim * 4 + 2048))
        total = 0
        for start in range(0, len(ids), rows_per_message):
            rows = []
            for i in range(start, min(start + rows_per_message, len(ids))):
                a = attrs[i] if attrs else VectorAttrs()
                rows.append(
                    {
                        "id": int(ids[i]),
                        "vector": vectors[i].tolist(),
                        "source": a.source,
                        "tags": list(a.tags)[:MAX_TAGS],
                        "created_at": int(a.created_at),
                    }
                )
            self._wrote(name)
            if meta.index.time_partitions:
                count = self._write_by_period(name, meta.index.time_partitions, rows)
            elif meta.index.source_partitions:
                # The Milvus 2.3.5 server routes *upserted* rows of a partition-key
                # collection to the wrong partitions (a source-filtered search then
                # misses them; tests/MILVUS_NOTES.md); inserted rows are
                # routed by their key. So: delete the ids, then insert. A crash in
                # between leaves the SQL rows unmarked, and the next run redoes them.
                pk_ids = [r["id"] for r in rows]
                self._call(lambda c: c.delete(name, ids=pk_ids, timeout=self.timeout), name)  # noqa: B023 (called at once)
                result = self._call(lambda c: c.insert(name, rows, timeout=self.timeout), name)  # noqa: B023 (called at once)
                count = int(result.get("insert_count", len(rows)) if isinstance(result, dict) else len(rows))
            else:
                result = self._call(lambda c: c.upsert(name, rows, timeout=self.timeout), name)  # noqa: B023 (called at once)
                count = int(result.get("upsert_count", len(rows)) if isinstance(result, dict) else len(rows))
            if count != len(rows):
                raise DependencyUnavailable("milvus", f"upserted {count} of {len(rows)} vectors")
            total += count
        if visible:
            self.wait_visible(name)
        return total

    def _write_by_period(self, name: str, granularity: str, rows: list[dict]) -> int:
        """Write rows into the partitions of their created_at's periods (created on demand).

        An upsert only replaces a row within the partition it writes to: the 2.3.5 server keeps
        the old copy of an id in its old partition (two rows, one id; measured in
        tests/stores/test_time_partitions.py). So, as for the partition key: delete the ids
        from every partition, then insert each row into its period's. A crash in between leaves
        the SQL rows unmarked, and the next run redoes them.
        """
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(period_partition(r["created_at"], granularity), []).append(r)
        pk_ids = [r["id"] for r in rows]
        self._call(lambda c: c.delete(name, ids=pk_ids, timeout=self.timeout), name)
        count = 0
        for partition, part_rows in sorted(groups.items()):
            self._ensure_partition(name, partition)
            try:
                result = self._call(
                    lambda c: c.insert(name, part_rows, partition_name=partition, timeout=self.timeout),  # noqa: B023 (called at once)
                    name,
                )
            except ServiceError as exc:
                # Dropped by a retention run of another process since this one created it.
                if "partition" not in exc.message.lower():
                    raise
                self._partitions.get(name, set()).discard(partition)
                self._ensure_partition(name, partition)
                result = self._call(
                    lambda c: c.insert(name, part_rows, partition_name=partition, timeout=self.timeout),  # noqa: B023 (called at once)
                    name,
                )
            n = result.get("insert_count", len(part_rows)) if isinstance(result, dict) else len(part_rows)
            count += int(n)
        return count

    def _ensure_partition(self, name: str, partition: str) -> None:
        known = self._partitions.setdefault(name, set())
        if partition in known:
            return
        if not self._call(lambda c: c.has_partition(name, partition, timeout=self.timeout), name):
            try:
                # A new partition of a loaded collection is loaded with it (2.3 server and Lite).
                self._call(lambda c: c.create_partition(name, partition, timeout=self.timeout), name)
            except InvalidInput:
                raise
            except ServiceError as exc:
                text = exc.message.lower()
                if "exceed" in text or "max" in text:
                    raise Conflict(
                        f"collection {name!r} cannot take another partition ({partition}): Milvus' "
                        "rootCoord.maxPartitionNum is reached; drop old periods (retention) or use a "
                        "coarser time_partitions",
                        collection=name,
                    ) from exc
                if not self._call(lambda c: c.has_partition(name, partition, timeout=self.timeout), name):
                    raise  # not made by a concurrent writer either
        known.add(partition)

    @_one_deadline
    def time_partitions(self, name: str) -> list[str]:
        """The collection's time partitions (names from `period_partition`), oldest first."""
        parts = self._call(lambda c: c.list_partitions(name, timeout=self.timeout), name)
        return sorted(p for p in parts if partition_period(p) is not None)

    @_one_deadline
    def drop_partitions(self, name: str, partitions: Sequence[str]) -> None:
        """Drop whole time partitions with their rows; one already gone is skipped. A server
        drops only released partitions: each is released first (Milvus Lite has no partition
        release and drops a loaded one)."""
        self._advance(name)
        try:
            for partition in partitions:
                if partition_period(partition) is None:
                    raise InvalidInput(f"{partition!r} is not a time partition")
                self._partitions.get(name, set()).discard(partition)
                if not self._call(lambda c: c.has_partition(name, partition, timeout=self.timeout), name):  # noqa: B023 (called at once)
                    continue
                if not self.is_lite:
                    self._call(lambda c: c.release_partitions(name, [partition], timeout=self.timeout), name)  # noqa: B023 (called at once)
                self._call(lambda c: c.drop_partition(name, partition, timeout=self.timeout), name)  # noqa: B023 (called at once)
        finally:
            self._advance(name)

    @_one_deadline
    def flush(self, name: str, bulk: bool = False) -> None:
        """Seal what was written, so searches use the collection's index.

        Milvus Lite searches unflushed rows in Python, row by row, many times
        slower than flushed ones (bench/README.md, "Findings and suggested
        changes"): flushed after every load or add batch. A server searches unsealed ("growing")
        rows without the collection's index; after a bulk load (`bulk`) it is
        flushed too. Small adds on a server are left to Milvus' own sealing:
        flushing each would leave many tiny segments. Either way it returns
        once searches see the writes (`wait_visible`).
        """
        if not (self.is_lite or bulk):
            # An add's flush on a server: the visibility probe shares the request's
            # Milvus budget, so an add that waited for a slow server already does
            # not wait one more MILVUS_TIMEOUT_S here.
            self.wait_visible(name)
            return
        # Sealing a large load can take longer than one ordinary call.
        self._call(lambda c: c.flush(name, timeout=self.timeout), name, wait_s=max(self.timeout_s, 120.0))
        if bulk:
            # A load ends searchable: wait for the collection's load if it is
            # still running (see create_collection), as patiently as for the flush.
            self._ensure_loaded(name, wait_s=max(self.timeout_s, 120.0))
        with self._fresh_deadline():  # the long waits above may have used up this call's
            self.wait_visible(name)

    @_one_deadline
    def delete(self, name: str, ids: Sequence[int], *, visible: bool = True) -> None:
        """Delete by id; with `visible`, return once searches no longer see them."""
        if not ids:
            return
        self._ensure_loaded(name)
        self._advance(name)
        try:
            for start in range(0, len(ids), 1000):
                chunk = check_int64(ids[start : start + 1000], "image id")
                self._wrote(name)
                self._call(lambda c: c.delete(name, ids=chunk, timeout=self.timeout), name)  # noqa: B023 (called at once)
        finally:
            self._advance(name)
        if visible:
            self.wait_visible(name)

    @_one_deadline
    def existing_ids(self, name: str, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        self._ensure_loaded(name)
        found: set[int] = set()
        for start in range(0, len(ids), 1000):
            expr = ids_filter(list(ids[start : start + 1000]))
            rows = self._call(
                lambda c: c.query(
                    name,
                    filter=expr,  # noqa: B023 - the lambda is called at once
                    output_fields=["id"],
                    consistency_level=self._read_level(name),
                    timeout=self.timeout,
                ),
                name,
            )
            found.update(int(r["id"]) for r in rows)
        return found

    @_one_deadline
    def strong_existing_ids(self, name: str, ids: Sequence[int], chunk: int = 1000) -> set[int]:
        """Like `existing_ids`, read at Strong: every write acknowledged before it, by any process.
        Each query of `chunk` ids waits for a time tick; at most 16,384 (a query's result limit)."""
        if not ids:
            return set()
        chunk = min(max(1, chunk), 16_384)
        self._ensure_loaded(name)
        found: set[int] = set()
        for start in range(0, len(ids), chunk):
            expr = ids_filter(list(ids[start : start + chunk]))
            rows = self._call(
                lambda c: c.query(
                    name,
                    filter=expr,  # noqa: B023 - the lambda is called at once
                    output_fields=["id"],
                    consistency_level="Strong",
                    timeout=self.timeout,
                ),
                name,
            )
            found.update(int(r["id"]) for r in rows)
        return found

    # -- bulk import (a Milvus server's own import of row-based JSON files) ---------------
    # pymilvus 3.0's MilvusClient has no bulk-insert method for the 2.3 server (its
    # `bulk_import` speaks the 2.4+ REST API), so these call the client's gRPC handler,
    # whose do_bulk_insert / get_bulk_insert_state / list_bulk_insert_tasks are the
    # Import RPCs of 2.3. Findings on the 2.3.5 server: bench/README.md, "Bulk import".
    def _refuse_lite(self) -> None:
        if self.is_lite:
            raise InvalidInput(
                "bulk import needs a Milvus server: Milvus Lite has no import of files; "
                "load without --bulk-import"
            )

    @_one_deadline
    def start_import(self, name: str, path: str) -> int:
        """Start the server's import of one row-based JSON file (an absolute path the
        server can read); returns the task id. The rows are not deduplicated by id."""
        self._refuse_lite()
        return int(
            self._call(
                lambda c: c._get_connection().do_bulk_insert(name, "", [path], timeout=self.timeout),
                name,
            )
        )

    @_one_deadline
    def import_state(self, task_id: int) -> ImportTask:
        """The state of an import task (kept by the server for a day after it ends)."""
        self._refuse_lite()
        st = self._call(lambda c: c._get_connection().get_bulk_insert_state(task_id, timeout=self.timeout))
        return _import_task(st)

    @_one_deadline
    def import_tasks(self, name: str) -> list[ImportTask]:
        """The import tasks of a collection the server still keeps."""
        self._refuse_lite()
        tasks = self._call(
            lambda c: c._get_connection().list_bulk_insert_tasks(0, name, timeout=self.timeout), name
        )
        return [_import_task(t) for t in tasks]

    @_one_deadline
    def get_vectors(self, name: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        if not ids:
            return {}
        self._ensure_loaded(name)
        expr = ids_filter(list(ids))
        rows = self._call(
            lambda c: c.query(
                name,
                filter=expr,
                output_fields=["id", "vector"],
                consistency_level=self._read_level(name),
                timeout=self.timeout,
            ),
            name,
        )
        return {int(r["id"]): np.asarray(r["vector"], dtype=np.float32) for r in rows}

    @_one_deadline
    def count(self, name: str) -> int:
        self._ensure_loaded(name)
        rows = self._call(
            lambda c: c.query(
                name,
                filter="",
                output_fields=["count(*)"],
                consistency_level=self._read_level(name),
                timeout=self.timeout,
            ),
            name,
        )
        return int(rows[0]["count(*)"]) if rows else 0

    # -- search -------------------------------------------------------------
    def _search_params(self, meta: CollectionInfo, extra: dict | None = None) -> dict:
        return {"metric_type": "IP", "params": {**meta.index.search_params, **(extra or {})}}

    @_one_deadline
    def search(
        self, name: str, vectors: np.ndarray, top_k: int, flt: SearchFilter | None = None
    ) -> list[list[Hit]]:
        if not 1 <= top_k <= MAX_STORE_HITS:
            raise InvalidInput(f"top_k must be in 1..{MAX_STORE_HITS}")
        meta = self.describe_meta(name)
        self._ensure_loaded(name)
        expr, _ = build_filter(flt)
        data = np.atleast_2d(np.asarray(vectors, dtype=np.float32)).tolist()
        result = self._call(
            lambda c: c.search(
                name,
                data=data,
                limit=top_k,
                filter=expr,
                output_fields=["id"],
                search_params=self._search_params(meta),
                consistency_level=self._read_level(name),
                timeout=self.timeout,
            ),
            name,
        )
        return [_hits(row) for row in result]

    @_one_deadline
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
        return self._range(name, vector, min_score, limit, flt, max_score, 0)

    def _range(
        self,
        name: str,
        vector: np.ndarray,
        min_score: float,
        limit: int,
        flt: SearchFilter | None,
        max_score: float | None,
        offset: int,
    ) -> list[Hit]:
        meta = self.describe_meta(name)
        self._ensure_loaded(name)
        expr, _ = build_filter(flt)
        # For IP, Milvus returns radius < score <= range_filter; nudge the
        # lower bound so a score exactly at the threshold is included (the
        # upper bound is inclusive already).
        upper = 1.0 + 1e-3 if max_score is None else float(max_score)
        params = self._search_params(meta, {"radius": float(min_score) - 1e-6, "range_filter": upper})
        result = self._call(
            lambda c: c.search(
                name,
                data=[np.asarray(vector, np.float32).tolist()],
                limit=min(limit, MAX_STORE_HITS),
                filter=expr,
                output_fields=["id"],
                search_params=params,
                consistency_level=self._read_level(name),
                timeout=self.timeout,
                **({"offset": offset} if offset else {}),
            ),
            name,
        )
        return [h for h in _hits(result[0]) if min_score <= h.score <= upper]

    def range_pages(
        self, name: str, vector: np.ndarray, min_score: float, page_size: int, flt: SearchFilter | None = None
    ) -> Iterator[list[Hit]]:
        """Every hit with score >= min_score, best first, `page_size` (<= 16,384) at a time.

        A server pages by score: each page asks for scores at or below the last
        page's lowest (range_filter), and the ids already returned at (or within
        _TIE_BAND above) that score are excluded by the filter, so equal scores
        spanning a page boundary come once each. Milvus Lite 3.x answers a range
        search from the top 5 x (limit + offset) hits only, so a score window far
        down the ranking comes back short: Lite pages by `offset` instead (it has
        no cap on offset + limit; the server caps it at 16,384).
        """
        page_size = max(1, min(page_size, MAX_STORE_HITS))
        if self.is_lite:
            offset = 0
            while True:
                page = self._range(name, vector, min_score, page_size, flt, None, offset)
                yield page
                if len(page) < page_size:
                    return
                offset += len(page)
        upper: float | None = None
        band: dict[int, float] = {}  # returned ids whose score may reach the next page's window
        base = flt or SearchFilter()
        while True:
            page_filter = (
                dataclasses.replace(base, exclude_ids=base.exclude_ids + tuple(band)) if band else flt
            )
            page = [h for h in self.range_search(name, vector, min_score, page_size, page_filter, upper)]
            page = [h for h in page if h.id not in band]
            yield page
            if len(page) < page_size:
                return
            upper = page[-1].score + _TIE_BAND
            band = {
                i: s for i, s in itertools.chain(band.items(), ((h.id, h.score) for h in page)) if s <= upper
            }


def _hits(row) -> list[Hit]:
    hits = [Hit(int(h["id"]), float(h["distance"])) for h in row]
    # Milvus orders by score; equal scores are ordered by id here so results
    # are stable across Lite and server.
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits
