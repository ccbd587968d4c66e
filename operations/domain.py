"""The service's value types: what an image, a vector's attributes, a filter, an index and a
search hit are, with the rules every store and use case shares.

Plain data with validation, no I/O: stores (`operations/stores/`) take and return these, use
cases build them, routes translate them to and from JSON.
"""

from __future__ import annotations

import calendar
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from operations.errors import Conflict, InvalidInput
from operations.names import check_label

# IVF_SQ8 keeps IVF_FLAT's lists with 8-bit codes: a quarter of the vectors' memory for a little
# recall (bench/README.md, "IVF_SQ8's latency at 1,000,000"); the choice where RAM is the limit.
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
# "AUTO" in a request: the service picks FLAT (exact) for a collection expected to hold fewer
# than AUTO_INDEX_FLAT_BELOW vectors, else HNSW with the parameters below, chosen as the cheapest
# that reached recall@10 >= 0.99 on realistic features (bench/README.md, "Index choice"). It is
# resolved when the collection is created (`IndexSpec.resolve`); stores only see concrete types.
AUTO = "AUTO"
AUTO_HNSW_BUILD = {"M": 16, "efConstruction": 200}
AUTO_HNSW_SEARCH = {"ef": 256}
# Milvus caps partitions per collection (rootCoord.maxPartitionNum, 1024 on small setups).
MAX_SOURCE_PARTITIONS = 1024
# Sources or tags in one filter: each becomes one literal of a filter expression.
MAX_FILTER_VALUES = 64
# An `only_ids` list (Lite tag filters resolved in SQL, see operations.vector_filter): each id
# is one literal of an `id in [...]` expression.
MAX_ONLY_IDS = 20_000
INT64_MAX = 2**63 - 1
# Time partitions (IndexSpec.time_partitions): each row goes into the Milvus partition named by
# the period of its created_at, so retention by age drops whole partitions. Periods are UTC.
TIME_PARTITIONS = ("day", "month", "year")
# The latest created_at a period is computed for (9999-12-31T23:59:59Z, operations.bounds);
# values outside 0..this are clamped into the first or last period.
_LAST_SECOND = 253_402_300_799
_PERIOD_FORMATS = {"year": "t%Y", "month": "t%Y_%m", "day": "t%Y_%m_%d"}


def check_int64(value: object, what: str) -> int:
    """`value` if it is a Python int within int64 (not a bool), else InvalidInput naming it."""
    if not isinstance(value, int) or isinstance(value, bool) or not -INT64_MAX <= value <= INT64_MAX:
        raise InvalidInput(f"{what} must be an integer")
    return value


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
    # Chosen by AUTO (describe says so; the parameters are the service's, not the caller's).
    auto: bool = False
    # "day" | "month" | "year": each row goes into the Milvus partition of its created_at's period
    # (created on demand), so retention by age drops whole partitions; None = none. Exclusive
    # with source_partitions (a partition-key collection cannot have partitions of its own).
    time_partitions: str | None = None

    def check(self, allow_auto: bool = False) -> IndexSpec:
        """Raise InvalidInput unless valid; "AUTO" only with `allow_auto` (a request, not yet
        resolved) and then without parameters: it chooses its own."""
        if self.type == AUTO and allow_auto:
            if self.build_params or self.search_params:
                raise InvalidInput(
                    "index type AUTO chooses its own parameters: give no index_params or search_params"
                )
            self._check_partitions()
            return self
        if self.type not in INDEX_TYPES:
            kinds = (*INDEX_TYPES, AUTO) if allow_auto else INDEX_TYPES
            raise InvalidInput(f"index type must be one of {kinds}, not {self.type!r}")
        allowed: tuple[set[str], set[str]] = {
            "FLAT": (set(), set()),
            "IVF_FLAT": ({"nlist"}, {"nprobe"}),
            "IVF_SQ8": ({"nlist"}, {"nprobe"}),
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
        self._check_partitions()
        return self

    def _check_partitions(self) -> None:
        n = self.source_partitions
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_SOURCE_PARTITIONS:
            raise InvalidInput(
                f"source_partitions must be an integer in 0..{MAX_SOURCE_PARTITIONS} (0 = none)"
            )
        if self.time_partitions is not None and self.time_partitions not in TIME_PARTITIONS:
            raise InvalidInput(f"time_partitions must be one of {TIME_PARTITIONS} or none")
        if self.time_partitions and n:
            raise InvalidInput(
                "time_partitions and source_partitions exclude each other: a collection partitioned "
                "by a source key cannot have partitions of its own"
            )

    def resolve(self, expected_vectors: int, flat_below: int) -> IndexSpec:
        """The concrete index for a new collection: AUTO becomes FLAT when fewer than
        `flat_below` vectors are expected, else the recall-tuned HNSW; others are unchanged."""
        if self.type != AUTO:
            return self
        if expected_vectors < flat_below:
            return dataclasses.replace(self, type="FLAT", build_params={}, search_params={}, auto=True)
        return dataclasses.replace(
            self,
            type="HNSW",
            build_params=dict(AUTO_HNSW_BUILD),
            search_params=dict(AUTO_HNSW_SEARCH),
            auto=True,
        )


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(min(max(int(ts), 0), _LAST_SECOND), tz=UTC)


def period_partition(created_at: int, granularity: str) -> str:
    """The name of the time partition that holds a row created at `created_at` (unix seconds):
    t2026, t2026_01 or t2026_01_15 for year, month or day."""
    return _utc(created_at).strftime(_PERIOD_FORMATS[granularity])


def period_start(ts: int, granularity: str) -> int:
    """The first second of the period (UTC) that contains `ts`."""
    d = _utc(ts)
    if granularity == "year":
        d = d.replace(month=1, day=1)
    elif granularity == "month":
        d = d.replace(day=1)
    return calendar.timegm(d.replace(hour=0, minute=0, second=0).timetuple())


def partition_period(name: str) -> tuple[int, int] | None:
    """[start, end) in unix seconds of a time partition named by `period_partition`; None for
    any other partition (Milvus' `_default`)."""
    parts = name[1:].split("_") if name.startswith("t") else []
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    y, m, d = (int(p) for p in parts + ["1"] * (3 - len(parts)))
    try:
        start = datetime(y, m, d, tzinfo=UTC)
    except ValueError:
        return None
    days = {1: 365 + calendar.isleap(y), 2: calendar.monthrange(y, m)[1], 3: 1}[len(parts)]
    first = calendar.timegm(start.timetuple())
    return first, first + days * 86_400


@dataclass(frozen=True)
class VectorAttrs:
    """Scalar fields stored beside each vector, used by filters."""

    source: str = ""
    tags: tuple[str, ...] = ()
    created_at: int = 0  # unix seconds


@dataclass(frozen=True)
class SearchFilter:
    """Typed filter values: `check` validates them, each store renders them its own way
    (`milvus_filter.build_filter`, the SQL store's WHERE clause)."""

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

    def check(self) -> SearchFilter:
        """Raise InvalidInput unless every value is one a store may render into a query."""
        for values, what in ((self.sources, "source"), (self.tags, "tag")):
            if len(values) > MAX_FILTER_VALUES:
                raise InvalidInput(f"at most {MAX_FILTER_VALUES} {what} values in one filter")
            for v in values:
                check_label(v, what)
        if self.created_from is not None:
            check_int64(self.created_from, "created_from")
        if self.created_to is not None:
            check_int64(self.created_to, "created_to")
        for i in self.exclude_ids:
            check_int64(i, "image id")
        if self.only_ids is not None:
            if not self.only_ids or len(self.only_ids) > MAX_ONLY_IDS:
                raise InvalidInput(f"only_ids must hold 1..{MAX_ONLY_IDS} ids")
            for i in self.only_ids:
                check_int64(i, "image id")
        return self

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
    """One search result: an image id and its cosine similarity to the query."""

    id: int
    score: float


@dataclass(frozen=True)
class CollectionInfo:
    """What a vector collection records about itself."""

    name: str
    model_name: str
    dim: int
    index: IndexSpec
    count: int
    # This making of the collection (the Milvus server's collection id): another value after
    # it is dropped and made again, by any process. None where there is none (Milvus Lite).
    incarnation: int | None = None


def check_model(info: CollectionInfo, model_name: str, dim: int) -> None:
    """Refuse to mix vectors of different models in one collection."""
    if info.dim != dim or info.model_name != model_name:
        raise Conflict(
            f"collection {info.name!r} was built with model {info.model_name} ({info.dim}-d); "
            f"the service runs {model_name} ({dim}-d): use another collection or model",
            collection=info.name,
        )


def check_written_model(info: CollectionInfo, model_name: str | None, incarnation: int | None = None) -> None:
    """Refuse a write whose vectors were encoded with `model_name` (None: not known, no check)
    when the collection is another model's, or that began on another `incarnation` of it
    (None: no check; its ids were given by the SQL table of that making): another process
    dropped it and made it again under the same name since the writer described it. Nothing
    is written; sent again, the write is encoded with the collection's model."""
    if incarnation is not None and info.incarnation != incarnation:
        raise Conflict(
            f"collection {info.name!r} was dropped and made again by another process while this "
            "write ran: nothing was written, send it again",
            collection=info.name,
        )
    if model_name is not None and info.model_name != model_name:
        raise Conflict(
            f"collection {info.name!r} is now built with model {info.model_name} (made again by "
            f"another process); this write was encoded with {model_name}: nothing was written, "
            "send it again",
            collection=info.name,
        )


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

    def stored_id(self) -> int:
        """The id of a row read from (or bound for) a store: only a new upload has none yet."""
        if self.id is None:
            raise ValueError("this image row has no id yet")
        return int(self.id)  # a plain int, also when the row was built with a numpy int


@dataclass(frozen=True)
class InsertResult:
    """Outcome of inserting rows with given ids."""

    inserted: list[int]
    already_present: list[int]  # same id existed (a re-run load)
    duplicate_of: dict[int, int]  # id -> existing id holding the same bytes
    rejected: dict[int, str] = field(default_factory=dict)  # id -> why the row cannot be stored
