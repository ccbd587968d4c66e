"""pHashes for images stored without one: the backfill job.

An add hashes each new image (operations.ingest); a dataset load does not (it never decodes
an image that comes with its feature, and decoding would cost it most of its speed), and
images stored before pHashes existed have none. This job reads those images a page at a time
(`ids_without_phash`), decodes them, and stores their hash and bands.

Resumable: each page's hashes are stored before the next page is read, so a run that stops
(cancel, restart, an outage) leaves the hashed images hashed, and the next run starts with
the images still missing. An image that cannot be decoded is reported and skipped; it stays
without a hash (a listing says how many) and is tried again by the next run.
"""

from __future__ import annotations

from operations.context import Services
from operations.errors import ServiceError
from operations.images import decode_b64_image
from operations.phash import bands, phash64
from operations.progress import Counter, Progress

# Images decoded per page: a page of base64 images is held in memory at once.
PAGE = 64


def backfill_phashes(
    svc: Services, collection: str, progress: Progress | None = None, *, own_total: bool = True
) -> dict:
    """Hash every stored image of `collection` that has no pHash; {"hashed", "failed", "left"}.

    own_total: set the progress total to the images missing a hash (False when this is the
    first phase of a longer job, which counts its own total)."""
    svc.require_collection(collection)
    progress = progress or Counter()
    images = svc.images
    if own_total:
        progress.set_total(images.count_without_phash(collection))
    hashed = failed = 0
    after = -1  # ids are 0..2^63-1
    while not progress.cancelled():
        ids = images.ids_without_phash(collection, after, PAGE)
        if not ids:
            break
        after = ids[-1]  # past the page, so an image that fails is not read again in this run
        rows = images.get_rows(collection, ids, with_image=True)
        items = []
        for image_id in ids:
            row = rows.get(image_id)
            if row is None:
                continue  # deleted meanwhile
            try:
                value = phash64(decode_b64_image(row.image_b64 or "", svc.settings.max_image_pixels))
            except (ServiceError, ValueError, OSError) as exc:
                progress.fail(f"image {image_id}", f"cannot decode: {getattr(exc, 'message', exc)}")
                failed += 1
                continue
            items.append((image_id, value, bands(value)))
        if items:
            images.put_phashes(collection, items)
            hashed += len(items)
            progress.advance(len(items))
    if own_total:
        progress.flush()
    return {"hashed": hashed, "failed": failed, "left": images.count_without_phash(collection)}
