"""Collection management: create, list, describe, drop."""

from __future__ import annotations

from dataclasses import dataclass

from operations.context import Services
from operations.domain import IndexSpec
from operations.errors import NotFound
from operations.names import validate_name


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


def create_collection(
    svc: Services, name: str, model: str | None = None, index: IndexSpec | None = None
) -> CollectionSummary:
    """Create `name` for `model` (the default model if None); idempotent for the same model."""
    validate_name(name)
    encoder = svc.encoders.get(model) if model else svc.encoder
    svc.ensure_collection(name, encoder, (index or svc.default_index()).check())
    return describe_collection(svc, name)


def describe_collection(svc: Services, name: str) -> CollectionSummary:
    validate_name(name)
    info = svc.vectors.describe(name)
    images = svc.images.count(name) if svc.images.has_collection(name) else 0
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
