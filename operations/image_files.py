"""Serving stored images and spooling uploads: the work below the HTTP routes.

Thumbnails are cached by content (sha256 + size), so an entry is never stale. Uploads of a bulk
add are written to disk before the job starts, so the job can be resumed after a restart.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from operations.context import Services
from operations.domain import ImageRow
from operations.errors import InvalidInput, NotFound
from operations.images import stored_image_bytes, thumbnail_jpeg
from operations.ingest import Upload
from operations.names import validate_name

THUMB_SIZES = (64, 128, 256, 512)
# Spooled files keep a known image suffix; any other name gets .jpg (the content, not the name,
# decides what an upload is).
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class ThumbnailCache:
    """LRU of resized JPEGs keyed by (sha256, size): content-addressed, never stale."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple[str, int], value: bytes) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class ImageFile:
    """Bytes to send for an image, their media type and a validator (ETag value)."""

    data: bytes
    media_type: str
    etag: str


def image_row(svc: Services, collection: str, image_id: int, with_image: bool = False) -> ImageRow:
    """One stored row, or NotFound naming the image."""
    validate_name(collection)
    row = svc.images.get_rows(collection, [image_id], with_image=with_image).get(image_id)
    if row is None:
        raise NotFound(f"image {image_id} is not in collection {collection!r}", image_id=image_id)
    return row


def original_image(svc: Services, collection: str, image_id: int) -> ImageFile:
    """The stored image's own bytes and content type."""
    row = image_row(svc, collection, image_id, with_image=True)
    return ImageFile(stored_image_bytes(row.image_b64 or ""), row.mime, row.sha256)


def thumbnail(svc: Services, cache: ThumbnailCache, collection: str, image_id: int, size: int) -> ImageFile:
    """A JPEG of at most size x size (one of THUMB_SIZES), from the cache when it holds it."""
    if size not in THUMB_SIZES:
        raise InvalidInput(f"size must be one of {THUMB_SIZES}")
    meta = image_row(svc, collection, image_id)
    key = (meta.sha256, size)
    thumb = cache.get(key)
    if thumb is None:
        row = image_row(svc, collection, image_id, with_image=True)
        thumb = thumbnail_jpeg(stored_image_bytes(row.image_b64 or ""), size, svc.settings.max_image_pixels)
        cache.put(key, thumb)
    return ImageFile(thumb, "image/jpeg", f"{meta.sha256}-{size}")


def spool_uploads(
    data_root: Path,
    uploads: Sequence[Upload],
    source: str,
    tags: Sequence[str],
    created_at: int | None,
) -> tuple[str, dict]:
    """Write a bulk add's uploads under DATA_ROOT/.spool/<job id>; (job id, the job's params)."""
    job_id = uuid.uuid4().hex
    folder = data_root / ".spool" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    for i, up in enumerate(uploads):
        suffix = Path(up.filename).suffix.lower()
        name = f"{i:06d}{suffix if suffix in _IMAGE_SUFFIXES else '.jpg'}"
        (folder / name).write_bytes(up.data)
        meta[name] = {
            "filename": up.filename,
            "source": source,
            "tags": list(tags),
            "created_at": created_at,
            "external_id": up.external_id,
        }
    params = {
        "folder": str(folder),
        "source": source,
        "tags": list(tags),
        "created_at": created_at,
        "meta": meta,
        "spooled": True,
    }
    return job_id, params
