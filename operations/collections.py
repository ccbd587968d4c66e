"""Collection management: create, list, describe, drop."""

from __future__ import annotations

from dataclasses import dataclass

from operations.context import Services
from operations.domain import IndexSpec
from operations.duplicate_groups import duplicate_store
from operations.errors import NotFound
from operations.names import validate_name
from operations.ocr import drop_ocr, enable_ocr, ocr_enabled


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
    # For a collection whose index AUTO chose: the size it switches at, and whether the
    # collection has grown past it while still FLAT (a re-index is due; README "Index choice").
    auto_index: dict | None = None
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
    encoder = svc.encoders.get(model) if model else svc.encoder
    is_new = not svc.vectors.has_collection(name)
    svc.ensure_collection(
        name, encoder, (index or svc.default_index()).check(allow_auto=True), expected_vectors
    )
    if ocr or (ocr is None and is_new and svc.settings.ocr_enabled):
        enable_ocr(svc, name)
    return describe_collection(svc, name)


def describe_collection(svc: Services, name: str) -> CollectionSummary:
    validate_name(name)
    info = svc.vectors.describe(name)
    images = svc.images.count(name) if svc.images.has_collection(name) else 0
    auto = None
    if info.index.auto:
        flat_below = svc.settings.auto_index_flat_below
        auto = {
            "flat_below": flat_below,
            "reindex_due": info.index.type == "FLAT" and info.count >= flat_below,
        }
    return CollectionSummary(
        info.name,
        info.model_name,
        info.dim,
        info.index.type,
        info.index.build_params,
        info.index.search_params,
        info.index.source_partitions,
        info.count,
        images,
        svc.images.has_collection(name) and ocr_enabled(svc, name),
        auto,
        info.index.time_partitions,
    )


def list_collections(svc: Services) -> list[CollectionSummary]:
    return [describe_collection(svc, name) for name in svc.vectors.list_collections()]


def drop_collection(svc: Services, name: str) -> None:
    """Remove the collection's vectors and its images."""
    validate_name(name)
    if not svc.vectors.has_collection(name) and not svc.images.has_collection(name):
        raise NotFound(f"collection {name!r} does not exist", collection=name)
    svc.vectors.drop_collection(name)
    svc.images.drop_collection(name)
    drop_ocr(svc, name)
    if getattr(svc.images, "pool", None) is not None:
        duplicate_store(svc).drop(name)
