"""Collection names as clients use them, resolved to the collections holding the data.

A rebuild (operations.rebuild) writes a collection's data into a new collection
("images__v2", another model or index) and then points the name clients use ("images") at it:
searches move over at once, and the old collection is kept until dropped. The mapping lives
in SQL (operations/stores/sql_alias_store.py), so every replica follows it:

- A read (search, describe, fetch) resolves through a snapshot of the table that is at most
  ALIAS_REFRESH_S old: another replica's searches follow a switch within that bound (the old
  collection answers until then, with its own model, so nothing fails meanwhile).
- A write (add, delete, load) reads the table afresh on every store call, and is refused with
  503 and Retry-After while a switch holds the name's writes off (its fence): a write is
  never sent to a collection that is being left behind.
- One request resolves a name once (`Services.store_name` returns a `StoreName`, which the
  stores take as is): its encoder, its vector search and its SQL rows all come from the same
  collection even when a switch happens in the middle of it.

The stores themselves only ever see the resolved names, so what they cache (Milvus collection
descriptions, loaded state, write generations, the result cache's keys) belongs to one
collection and never starts pointing at another.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from typing import Any

from operations.errors import DependencyUnavailable, ServiceError
from operations.names import validate_name
from operations.stores.sql_alias_store import NameRow, SqlAliasStore

log = logging.getLogger(__name__)

# Between a name and its version number: "images__v2".
VERSION_SUFFIX = "__v"


class StoreName(str):
    """A collection name already resolved: the stores' wrappers pass it through unchanged.

    `alias`: the name it was resolved from (None for a collection named directly, e.g. a
    rebuild's new version or an old one by its version name). A write with such a pinned name
    checks, on every call, that the name still points here and is not fenced: a write that
    began before a switch fails (503, retried) instead of landing in the version left behind
    after its last rows were copied."""

    alias: str | None = None

    @classmethod
    def of(cls, store: str, alias: str | None) -> StoreName:
        out = cls(store)
        out.alias = alias
        return out


class AliasBook:
    """The name table of this process: a snapshot refreshed every `refresh_s` for reads,
    read afresh for writes (see the module docstring)."""

    def __init__(self, store: SqlAliasStore, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = float(refresh_s)
        self._rows: dict[str, NameRow] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def rows(self, fresh: bool = False) -> dict[str, NameRow]:
        """The table by name: afresh when asked or older than refresh_s."""
        with self._lock:
            if not fresh and time.monotonic() - self._loaded_at < self.refresh_s:
                return self._rows
        try:
            rows = {r.name: r for r in self.store.all()}
        except ServiceError:
            # SQL unavailable: a read goes on with what was known (its own SQL step fails
            # anyway); a write must not guess.
            if fresh or self._loaded_at == float("-inf"):
                raise
            log.debug("collection names not refreshed (SQL unavailable); using the last snapshot")
            return self._rows
        with self._lock:
            self._rows, self._loaded_at = rows, time.monotonic()
        return rows

    def forget(self) -> None:
        """Read the table again on next use (after this process changed it)."""
        with self._lock:
            self._loaded_at = float("-inf")

    def resolve(self, name: str, write: bool = False) -> StoreName:
        if isinstance(name, StoreName):
            if write and name.alias is not None:
                self._check_pinned(name)
            return name
        validate_name(name)
        row = self.rows(fresh=write).get(name)
        if row is None:
            return StoreName.of(name, name)
        if write and row.kind == "alias" and row.fenced:
            raise _switching(name)
        return StoreName.of(row.target, name if row.kind == "alias" else None)

    def _check_pinned(self, name: StoreName) -> None:
        assert name.alias is not None
        row = self.rows(fresh=True).get(name.alias)
        if row is not None and row.kind == "alias" and (row.fenced or row.target != name):
            raise _switching(name.alias)

    def alias_of(self, store: str) -> str | None:
        """The alias pointing at store name `store`, if any."""
        return next(
            (
                r.name
                for r in self.rows().values()
                if r.kind == "alias" and r.target == store and r.name != store
            ),
            None,
        )


def _switching(name: str) -> DependencyUnavailable:
    return DependencyUnavailable(
        "collection",
        f"{name!r} is switching to a new collection; writes resume within seconds",
        retry_after_s=2,
    )


# Store methods that change data: they resolve the name afresh and respect a switch's fence.
WRITES = frozenset(
    {
        "create_collection",
        "ensure_collection",
        "upsert",
        "delete",
        "insert_rows",
        "insert_new",
        "mark_indexed",
        "put_phashes",
        "put",
        "enable",
        "copy_rows",
        "drop_partitions",
        "stop_id_reuse",
    }
)
# Methods whose first argument is a collection name (everything else passes straight through).
_NAME_PARAMS = ("name", "collection")


class ResolvingStore:
    """A store whose collection-name arguments are resolved through an `AliasBook` first.

    Every public method whose first parameter is a collection name (`name` or `collection`)
    gets the resolved name; other attributes are the store's own (pool, is_lite, outage...).
    """

    def __init__(self, inner: Any, book: AliasBook) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_book", book)
        object.__setattr__(self, "_wrapped", {})

    @property
    def inner(self) -> Any:
        return self._inner

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if attr.startswith("_") or not callable(value) or not self._takes_name(attr):
            return value
        write = attr in WRITES
        book = self._book

        @functools.wraps(value)
        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            return value(book.resolve(name, write=write), *args, **kwargs)

        return call

    def _takes_name(self, attr: str) -> bool:
        """Whether the store class's method `attr` takes a collection name first (decided once
        per method, from the class, so a test's replacement of the method is still resolved)."""
        known = self._wrapped.get(attr)
        if known is None:
            method = getattr(type(self._inner), attr, None)
            try:
                params = list(inspect.signature(method).parameters)[1:] if callable(method) else []
            except (TypeError, ValueError):
                params = []
            known = self._wrapped[attr] = bool(params) and params[0] in _NAME_PARAMS
        return known

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._inner, attr, value)
