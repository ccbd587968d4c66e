"""Collection management: create, list, describe, drop."""

from __future__ import annotations

import re
from dataclasses import dataclass

from operations.aliases import VERSION_SUFFIX
from operations.context import Services
from operations.domain import IndexSpec
from operations.duplicate_groups import duplicate_store
from operations.errors import Conflict, InvalidInput, NotFound, ServiceError
from operations.names import validate_name
from operations.ocr import drop_ocr, enable_ocr, ocr_enabled
from operations.reindex import reindex_due

VERSION_NAME = re.compile(rf".+{re.escape(VERSION_SUFFIX)}[0-9]+")


@dataclass
class CollectionSummary:
    name: str
    model: str
    dim: int
    index_type: str
    index_params: dict
    search_params: dict
    source_partitions: int
    vectors: int
    images: int
    ocr: bool = False
    # For a collection whose index AUTO chose: the size it switches at, whether the collection
    # has grown past it while still FLAT (a re-index is due; README "Index choice") and, while it
    # is due, the rebuild doing it or the one that ended without it (`reindex_job`).
    auto_index: dict | None = None
    # Names (operations.aliases): `alias_of` is set when `name` is an alias (the version it
    # points at); `aliased_by` lists the aliases pointing at this collection; `physical` is
    # what Milvus and SQL call the collection holding the data.
    alias_of: str | None = None
    aliased_by: list[str] | None = None
    physical: str = ""
    time_partitions: str | None = None  # "day" | "month" | "year": Milvus partitions by created_at


def create_collection(
    svc: Services,
    name: str,
    model: str | None = None,
    index: IndexSpec | None = None,
    ocr: bool | None = None,
    expected_vectors: int = 0,
) -> CollectionSummary:
    """Create `name` for `model` (the default model if None); idempotent for the same model.

    expected_vectors: what an AUTO index is chosen for (see IndexSpec.resolve).
    ocr: read the text in its images (None: OCR_ENABLED for a new collection). Turning it on
    for a collection that already holds images reads only new ones; the OCR job reads the rest.
    """
    validate_name(name)
    if VERSION_NAME.fullmatch(name):
        # A rebuild makes and fills its versions (and fences their writes while it switches);
        # a name of that form made by hand would be taken for one.
        raise InvalidInput(
            f"{name!r}: names ending in {VERSION_SUFFIX}<number> are a rebuild's versions "
            "(POST /img/collections/{name}/rebuild makes them); choose another name"
        )
    encoder = svc.encoders.get(model) if model else svc.encoder
    is_new = not svc.vectors.has_collection(name)
    if is_new:
        svc.forget_pending_deletes(name)
    svc.ensure_collection(
        name, encoder, (index or svc.default_index()).check(allow_auto=True), expected_vectors
    )
    if ocr or (ocr is None and is_new and svc.settings.ocr_enabled):
        enable_ocr(svc, name)
    return describe_collection(svc, name)


def _names(svc: Services) -> dict:
    return svc.aliases.rows() if svc.aliases is not None else {}


def _api_name(rows: dict, store: str) -> str:
    """The name clients use for the collection stored as `store` (its v1 name for one made
    before aliases whose own name is now an alias)."""
    return next((r.name for r in rows.values() if r.kind == "version" and r.target == store), store)


def _pointing(rows: dict, store: str, name: str) -> list[str]:
    """The aliases (other than `name` itself) pointing at the collection stored as `store`."""
    return sorted(
        r.name
        for r in rows.values()
        if r.kind == "alias" and r.target == store and r.name not in (name, store)
    )


def describe_collection(svc: Services, name: str) -> CollectionSummary:
    validate_name(name)
    rows = _names(svc)
    store = svc.store_name(name)
    info = svc.vectors.describe(store)
    images = svc.images.count(store) if svc.images.has_collection(store) else 0
    auto: dict[str, object] | None = None
    if info.index.auto:
        flat_below = svc.settings.auto_index_flat_below
        due = reindex_due(info.index, info.count, flat_below)
        auto = {"flat_below": flat_below, "reindex_due": due}
        if due and (job := _reindex_job(svc, name)) is not None:
            auto["reindex_job"] = job
    row = rows.get(name)
    alias_of = (
        _api_name(rows, store) if row is not None and row.kind == "alias" and row.target != name else None
    )
    aliased_by = sorted(
        r.name
        for r in rows.values()
        if r.kind == "alias" and r.target == store and r.name not in (name, store)
    )
    return CollectionSummary(
        name,
        info.model_name,
        info.dim,
        info.index.type,
        info.index.build_params,
        info.index.search_params,
        info.index.source_partitions,
        info.count,
        images,
        svc.images.has_collection(store) and ocr_enabled(svc, store),
        auto,
        alias_of,
        aliased_by if alias_of is None else [],
        str(store),
        info.index.time_partitions,
    )


def _reindex_job(svc: Services, name: str) -> dict | None:
    """The latest rebuild of a collection due a re-index: under way, or the one that failed or
    was cancelled (after which no automatic one starts: operations.reindex). Best effort: the
    job table may be missing or SQL down, and describe still answers."""
    if svc.jobs is None:
        return None
    try:
        job = svc.jobs.latest_of("rebuild", name)
    except ServiceError:
        return None
    if job is None or job.state == "succeeded":
        return None
    return {"id": job.id, "state": job.state, "automatic": bool(job.params.get("automatic"))}


def list_collections(svc: Services) -> list[CollectionSummary]:
    """Every collection by the name clients use, and every alias (with what it points at)."""
    rows = _names(svc)
    names = {_api_name(rows, store) for store in svc.vectors.list_collections()}
    names |= {r.name for r in rows.values() if r.kind == "alias"}
    out = []
    for name in sorted(names):
        try:
            out.append(describe_collection(svc, name))
        except NotFound:  # dropped meanwhile
            continue
    return out


def drop_collection(svc: Services, name: str) -> None:
    """Remove a collection's vectors and its images.

    An alias (a rebuilt collection's name) is dropped with the collection it points at; older
    versions are kept until dropped by their own names. A version an alias points at is
    refused (409): switch the alias elsewhere, or drop the alias.
    """
    validate_name(name)
    rows = svc.aliases.rows(fresh=True) if svc.aliases is not None else {}
    row = rows.get(name)
    store = svc.store_name(name, write=False)
    pointing = sorted(
        r.name
        for r in rows.values()
        if r.kind == "alias" and r.target == store and r.name not in (name, store)
    )
    if pointing:
        raise Conflict(
            f"collection {name!r} is what {', '.join(map(repr, pointing))} points at: switch "
            f"(POST /img/collections/{pointing[0]}/switch) or drop the alias first",
            aliases=pointing,
        )
    if not svc.vectors.has_collection(store) and not svc.images.has_collection(store):
        raise NotFound(f"collection {name!r} does not exist", collection=name)
    is_alias = row is not None and row.kind == "alias"
    if is_alias and svc.aliases is not None:
        drop_alias = getattr(svc.vectors, "drop_alias", None)
        if drop_alias is not None:
            drop_alias(name)  # Milvus refuses to drop a collection an alias names
    svc.vectors.drop_collection(store)
    svc.images.drop_collection(store)
    svc.forget_pending_deletes(store)
    drop_ocr(svc, store)
    if getattr(svc.images, "pool", None) is not None:
        duplicate_store(svc).drop(store)
    if svc.aliases is not None:
        for r in rows.values():
            if r.name == name or (r.kind == "version" and r.target == store):
                svc.aliases.store.delete(r.name)
        svc.aliases.forget()
        # A collection made before aliases carried its alias's name in Milvus: now free.
        alias = rows.get(str(store))
        if alias is not None and alias.kind == "alias" and alias.target != store:
            from operations.rebuild import sync_milvus_alias

            sync_milvus_alias(svc, alias.name)
