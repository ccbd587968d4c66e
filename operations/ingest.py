"""Adding images: uploads, a server-side folder, and repair of unfinished rows.

Each image goes SQL first (the UNIQUE sha256 decides, inside the database,
whether it is new), then Milvus, then the row is marked indexed. Two identical
uploads at the same moment therefore leave one row, and the loser gets the
winner's id back as "present" once the winner's row has its vector: if the
winner's add fails, it takes its row back, and the loser stores the image
itself instead of naming an id that is gone.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from operations import metrics
from operations.bounds import MAX_TIMESTAMP
from operations.context import Services
from operations.data_root import read_under
from operations.domain import ImageRow, VectorAttrs
from operations.duplicates import same_picture
from operations.errors import DependencyUnavailable, InvalidInput, PayloadTooLarge, ServiceError
from operations.images import CheckedImage, check_image, decode_b64_image
from operations.names import check_label
from operations.ocr import PendingReads, ocr_enabled
from operations.phash import bands, phash64
from operations.progress import Counter, Progress

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BATCH = 32
# Images per forward pass of an add: a pass holds the model, so a query batch
# waits at most one chunk behind a bulk add; per image, chunks of 8 and of
# 32 cost about the same on CPU (bench/README.md, the add findings).
ADD_CHUNK = 8
# How long an add, its own images done, waits for other adds' rows of the same bytes to get
# their vectors before it answers "present" anyway.
HOLDER_WAIT_S = 10.0
# A row without its vector older than this (by its added_at, the adding replica's clock) is a
# dead add's (the server's periodic repair, a folder add or `imgsearch repair` indexes it) and is
# waited for not at all: far above a live add's rows (inserted one chunk ahead of their
# encoding) and clock skews.
HOLDER_DEAD_AFTER_S = 300.0
# Settling adds within settling adds (a third add held the bytes meanwhile): at most this deep.
HOLDER_SETTLE_DEPTH = 2
HOLDER_POLL_S = 0.05  # the first pause between looks; each next one twice as long, at most 1 s


@dataclass
class Upload:
    filename: str
    data: bytes
    source: str = "upload"
    tags: tuple[str, ...] = ()
    created_at: int | None = None
    external_id: str | None = None


@dataclass
class AddResult:
    index: int
    filename: str
    status: str  # added | present | failed
    id: int | None = None
    error: str | None = None
    near_duplicates: list[dict] = field(default_factory=list)
    # The strongest duplicate tier matched (operations.duplicates): "exact" (the same
    # bytes: status "present"), "phash" (the same picture re-encoded, resized or lightly
    # cropped: `same_picture`), "clip" (a near-duplicate, with near_duplicates=true).
    duplicate_tier: str | None = None
    same_picture: list[dict] = field(default_factory=list)
    ocr: dict | None = None  # collections with OCR: {"status", "lines", "text", "error"}


def check_metadata(source: str, tags: Iterable[str], created_at: int | None, external_id: str | None) -> None:
    """Validate metadata before anything is stored (the same charset as filters)."""
    check_label(source, "source")
    for tag in tags:
        check_label(tag, "tag")
    if created_at is not None and (
        not isinstance(created_at, int)
        or isinstance(created_at, bool)
        or not 0 <= created_at <= MAX_TIMESTAMP
    ):
        raise InvalidInput(f"created_at must be unix seconds in 0..{MAX_TIMESTAMP}")
    if external_id is not None and (not isinstance(external_id, str) or len(external_id) > 256):
        raise InvalidInput("external_id must be a string of at most 256 characters")


def add_images(
    svc: Services,
    collection: str,
    uploads: list[Upload],
    *,
    near_duplicates: bool = False,
    progress: Progress | None = None,
    settle_depth: int = 0,
) -> list[AddResult]:
    """Add uploads to `collection`; every upload gets a result, bad ones a reason.

    A two-stage pipeline over chunks of ADD_CHUNK uploads: a helper thread checks
    and decodes chunk k+1, inserts its SQL rows (the database decides what is
    new) and preprocesses its pixels while this thread runs chunk k through
    the encoder and writes its vectors. The encoder is nearly all of an add's
    time, so it is kept busy; the rest hides behind it.

    A `progress` passed in is advanced and told of failures, never flushed: its owner (a job
    over many calls) flushes it once at the end.
    """
    # Resolved once (operations.aliases): the encoder and every write are the same collection's.
    collection = svc.store_name(collection, write=True)
    svc.require_collection(collection)
    # The making of the collection this add writes to, asked now (a server: one call; it also
    # renews this process's description, so the encoder below is the collection's model): a
    # vector write refuses to land in a collection another replica made again after this.
    made = svc.vectors.incarnation(collection, fresh=True)
    encoder = svc.encoder_for(collection)
    progress = progress or Counter()
    # OCR reads run in their own bounded pool beside the encoder; a collection
    # without OCR pays this one query.
    reads = PendingReads(svc, collection) if ocr_enabled(svc, collection) else None
    results: list[AddResult] = []
    chunks = [(start, uploads[start : start + ADD_CHUNK]) for start in range(0, len(uploads), ADD_CHUNK)]
    with ThreadPoolExecutor(1, thread_name_prefix="add-prepare") as pool:
        # The helper thread runs in a copy of this context, so its SQL calls draw on
        # the request's store budget (operations/deadline.py) like this thread's, and its
        # log lines carry the request's id (operations/tracing.py).
        def submit(chunk: tuple[int, list[Upload]]) -> Future[_Prepared]:
            context = contextvars.copy_context()
            return pool.submit(
                lambda: context.run(_prepare, svc, collection, encoder, *chunk, progress, mine, made)
            )

        mine: set[int] = set()  # ids this add created (a repeat of its own bytes waits for nobody)
        held: list[tuple[AddResult, str, Upload]] = []  # "present" for other adds' unfinished rows
        pending: Future[_Prepared] | None = submit(chunks[0]) if chunks else None
        for k in range(len(chunks)):
            assert pending is not None  # set for every k < len(chunks)
            prepared = pending.result()
            pending = None
            if k + 1 < len(chunks) and not progress.cancelled():
                pending = submit(chunks[k + 1])
            try:
                _index(svc, collection, encoder, prepared, near_duplicates, progress, made)
            except BaseException:
                _take_back(svc, collection, prepared.new, made, vectors_sent=prepared.vectors_sent)
                if pending is not None:
                    # The next chunk's rows are in SQL already: take them back too. A chunk
                    # whose preparing failed took its own rows back (_prepare).
                    try:
                        next_chunk = pending.result()
                    except Exception:
                        next_chunk = None
                    if next_chunk is not None:
                        _take_back(svc, collection, next_chunk.new, made)
                raise
            results.extend(prepared.results)
            held.extend(prepared.held)
            if reads is not None:
                for result, _, img in prepared.new:
                    reads.submit(result.id, img.image)  # type: ignore[arg-type]  # a new image has its id
            if pending is None:
                break
    if held and settle_depth < HOLDER_SETTLE_DEPTH:
        _settle_held(svc, collection, held, near_duplicates, progress, settle_depth)
    if any(r.status == "added" for r in results):
        svc.vectors.flush(collection)  # returns once searches see the new images
    if reads is not None:
        report = reads.finish()
        for r in results:
            if r.status == "added" and r.id in report:
                r.ocr = report[r.id]
    if settle_depth == 0:  # the top call counts; a settling call's results are copied into its caller's
        for r in results:
            metrics.ADD_RESULTS.labels(r.status).inc()
    return results


@dataclass
class _Prepared:
    results: list[AddResult]
    new: list[tuple[AddResult, Upload, CheckedImage]]
    pixels: object = None  # the encoder's preprocessed batch of `new`, when it has that step
    vectors_sent: bool = False  # their vector write began: it may land even if it failed here
    # "present" for bytes another add stored: (result, sha256, upload), settled by _settle_held.
    held: list[tuple[AddResult, str, Upload]] = field(default_factory=list)


def _prepare(
    svc,
    collection,
    encoder,
    offset: int,
    batch: list[Upload],
    progress: Progress,
    mine: set[int],
    made: int | None,
) -> _Prepared:
    """Check and decode a chunk, insert its new SQL rows (indexed=0), preprocess their pixels."""
    results: list[AddResult] = []
    checked: list[tuple[AddResult, Upload, CheckedImage]] = []
    for i, up in enumerate(batch):
        result = AddResult(offset + i, up.filename, "failed")
        results.append(result)
        try:
            check_metadata(up.source, up.tags, up.created_at, up.external_id)
            checked.append(
                (
                    result,
                    up,
                    check_image(up.data, svc.settings.max_upload_bytes, svc.settings.max_image_pixels),
                )
            )
        except ServiceError as exc:
            result.error = exc.message
            progress.fail(up.filename, exc.message)
    new: list[tuple[AddResult, Upload, CheckedImage]] = []
    inserting: list[str] = []
    try:
        held: list[tuple[AddResult, str, Upload]] = []
        _insert_rows(svc, collection, checked, new, inserting, progress, mine, held)
        prepared = _Prepared(results, new, held=held)
        if new and hasattr(encoder, "preprocess_images") and hasattr(encoder, "encode_pixels"):
            prepared.pixels = encoder.preprocess_images([img.image for _, _, img in new])
    except BaseException as exc:
        # This chunk's rows are in SQL already, and an insert the store failed may
        # have landed too: take them back, as a failed add leaves nothing. (An insert
        # refused for its values stored nothing, and its bytes may be another add's.)
        store_failed = isinstance(exc, DependencyUnavailable) or not isinstance(exc, ServiceError)
        _take_back(svc, collection, new, made, unsure_shas=inserting if store_failed else [])
        raise
    return prepared


def _insert_rows(
    svc, collection, checked, new, inserting: list[str], progress: Progress, mine: set[int], held: list
) -> None:
    """Insert the chunk's rows (indexed=0); each created one is appended to `new` (and its id
    to `mine`) at once; bytes another add stored go to `held`.

    `inserting` holds the sha256 of an insert under way: if it raises, its outcome
    is unknown (the row may exist under an id nobody was told).
    """
    now = int(time.time())
    for result, up, img in checked:
        row = ImageRow(
            id=None,
            sha256=img.sha256,
            image_b64=img.b64,
            mime=img.mime,
            width=img.width,
            height=img.height,
            source=up.source,
            tags=tuple(up.tags),
            external_id=up.external_id,
            created_at=up.created_at if up.created_at is not None else now,
            added_at=now,
        )
        inserting[:] = [img.sha256]
        result.id, created = svc.images.insert_new(collection, row)
        inserting.clear()
        if created:
            mine.add(result.id)
            new.append((result, up, img))
            # Checked before this image's own hash is stored; earlier images of the
            # same add are stored already, so a re-encoded copy within one add is found.
            value = phash64(img.image)
            result.same_picture = same_picture(
                svc.images, collection, value, svc.settings.phash_max_distance, exclude=[result.id]
            )
            svc.images.put_phashes(collection, [(result.id, value, bands(value))])
            if result.same_picture:
                result.duplicate_tier = "phash"
        else:
            result.status = "present"
            result.duplicate_tier = "exact"
            if result.id not in mine:
                held.append((result, img.sha256, up))
            progress.advance(1)


def _settle_held(
    svc, collection: str, held: list, near_duplicates: bool, progress: Progress, depth: int
) -> None:
    """Answer "present" for bytes another add stored only once that add's row has its vector;
    if that add failed and took its row back, store them with a settling add instead (its
    result replaces the "present"). Run once this add's own rows are indexed, so two adds
    holding each other's bytes do not wait on each other; one wait of at most HOLDER_WAIT_S
    for the whole add, one query a look. A store that fails meanwhile ends the wait: this add's
    own images are stored, and what is still waiting is answered "present", as at the deadline."""
    waiting: dict[int, list[tuple[AddResult, str, Upload]]] = {}
    for entry in held:
        waiting.setdefault(entry[0].id, []).append(entry)
    deadline = time.monotonic() + HOLDER_WAIT_S
    pause = HOLDER_POLL_S
    while waiting and not progress.cancelled():
        try:
            rows = svc.images.get_rows(collection, list(waiting))
        except Exception as exc:
            log.warning(
                "could not settle %d held images of %s (%s); reported present", len(waiting), collection, exc
            )
            return
        dead_before = time.time() - HOLDER_DEAD_AFTER_S
        gone: list[tuple[AddResult, str, Upload]] = []
        for image_id in list(waiting):
            row = rows.get(image_id)
            if row is None or row.sha256 != waiting[image_id][0][1]:
                gone.extend(waiting.pop(image_id))  # taken back by its failed add
            elif row.indexed or row.added_at < dead_before:
                del waiting[image_id]
        if gone:
            _store_again(svc, collection, gone, near_duplicates, progress, depth)
        if not waiting:
            return
        if time.monotonic() >= deadline:
            log.info(
                "%d images of %s held by other adds have no vector after %.0f s; reported present",
                len(waiting),
                collection,
                HOLDER_WAIT_S,
            )
            return
        time.sleep(pause)
        pause = min(2 * pause, 1.0)


def _store_again(
    svc, collection: str, gone: list, near_duplicates: bool, progress: Progress, depth: int
) -> None:
    """Add the uploads whose holder took its row back; their results replace the "present"
    ones (the same bytes twice come back "added", then "present": one add's own repeat)."""
    try:
        # Settling in turn (to HOLDER_SETTLE_DEPTH): a third add may hold the bytes by now.
        again = add_images(
            svc,
            collection,
            [up for _, _, up in gone],
            near_duplicates=near_duplicates,
            settle_depth=depth + 1,
        )
    except Exception as exc:  # this add's own images are stored: only these fail
        reason = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"[:300]
        for result, _, up in gone:
            result.status, result.id, result.duplicate_tier, result.error = "failed", None, None, reason
            progress.fail(up.filename, reason)
        return
    for (result, _, _), settled in zip(gone, again, strict=True):
        for f in dataclasses.fields(AddResult):
            if f.name not in ("index", "filename"):
                setattr(result, f.name, getattr(settled, f.name))


def _index(
    svc, collection, encoder, prepared: _Prepared, near_duplicates: bool, progress: Progress, made: int | None
) -> None:
    """Encode a prepared chunk's new images and write their vectors."""
    new = prepared.new
    if not new:
        return
    if prepared.pixels is not None:
        vectors = encoder.encode_pixels(prepared.pixels)
    else:
        vectors = encoder.encode_images([img.image for _, _, img in new])
    if near_duplicates:
        _report_near_duplicates(svc, collection, new, vectors)
    now = int(time.time())
    ids = [r.id for r, _, _ in new]
    attrs = [
        VectorAttrs(up.source, tuple(up.tags), up.created_at if up.created_at is not None else now)
        for _, up, _ in new
    ]
    # Visible at once only when the next chunk's near-duplicate check must see
    # this one; otherwise the final flush waits once for the whole add.
    prepared.vectors_sent = True
    svc.vectors.upsert(
        collection, ids, vectors, attrs, visible=near_duplicates, model=encoder.model_name, incarnation=made
    )
    svc.images.mark_indexed(collection, ids)
    for result, _, _ in new:
        result.status = "added"
    progress.advance(len(new))


def _take_back(
    svc, collection, new, made: int | None, *, vectors_sent: bool = False, unsure_shas: Sequence[str] = ()
) -> None:
    """Remove the rows of a chunk that failed, so no image is left without its vector.

    A vector write that failed may still land (a frozen server applies it when it
    runs again): once the rows are gone, their ids go to the vector cleanup, which
    deletes them when Milvus answers, so no vector is left without its row either.
    Rows that cannot be removed now (the SQL store is what failed), and inserts
    whose outcome is unknown (`unsure_shas`), go to the row cleanup, which removes
    them once the store answers (operations/row_cleanup.py).
    """
    # Which making of the collection the rows and vectors belong to: the one the add began on
    # (`made`; not what this process describes now, which a refused write has just renewed): a
    # cleanup that runs after another replica made it again must not touch the new one.
    incarnation = made
    if unsure_shas:
        svc.row_cleanup.submit(collection, shas=unsure_shas, incarnation=incarnation)
    ids = [r.id for r, _, _ in new]
    if not ids:
        return
    try:
        # Only rows that are still this add's (the same id and bytes): if another replica
        # dropped the collection and made it again meanwhile, these ids may name its images.
        stored = svc.images.get_rows(collection, ids)
        ids = [r.id for r, _, img in new if r.id in stored and stored[r.id].sha256 == img.sha256]
        if not ids:
            return
        svc.images.delete(collection, ids)
    except Exception as exc:
        if isinstance(exc, ServiceError):  # the SQL store is what failed: one line, no traceback
            log.warning("rows of a failed add are removed once the SQL store answers (%s)", exc.message)
        else:
            log.exception("could not remove rows of a failed add; the row cleanup retries")
        svc.row_cleanup.submit(collection, ids, incarnation=incarnation)
        return
    # Only once the rows are gone: a row left behind (its process died before the row
    # cleanup removed it) is indexed again by a repair, whose vector must stay.
    if vectors_sent:
        svc.vector_cleanup.submit(collection, ids, incarnation)


def _report_near_duplicates(svc, collection, new, vectors: np.ndarray) -> None:
    threshold = svc.settings.near_duplicate_threshold
    hits = svc.vectors.search(collection, vectors, 3)
    for (result, _, _), row_hits in zip(new, hits, strict=True):
        result.near_duplicates = [
            {"id": h.id, "score": round(h.score, 4)}
            for h in row_hits
            if h.score >= threshold and h.id != result.id
        ]
        if result.near_duplicates and result.duplicate_tier is None:
            result.duplicate_tier = "clip"


def iter_folder(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, in a stable order (so a resumed job repeats it)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def add_folder(
    svc: Services,
    collection: str,
    folder: Path,
    progress: Progress,
    *,
    source: str = "folder",
    tags: tuple[str, ...] = (),
    created_at: int | None = None,
    meta: dict[str, dict] | None = None,
    data_root: Path | None = None,
) -> dict:
    """Add every image under `folder` (a background job); returns counts.

    With `data_root` (every folder add the server runs), each file is opened
    and checked to lie under it before it is read; one outside is reported
    as failed and the rest are added.
    """
    check_metadata(source, tags, created_at, None)
    collection = svc.store_name(collection, write=True)
    svc.require_collection(collection)
    # Only a dead add's rows: a live add (another replica, another thread) indexes its own.
    repair_unindexed(svc, collection, older_than_s=HOLDER_DEAD_AFTER_S)
    files = list(iter_folder(folder))
    progress.set_total(len(files))
    added = present = 0
    for start in range(0, len(files), BATCH):
        if progress.cancelled():
            break
        uploads = []
        for path in files[start : start + BATCH]:
            m = (meta or {}).get(path.name, {})
            try:
                data = _read_file(path, svc.settings.max_upload_bytes, data_root)
            except ServiceError as exc:
                progress.fail(path.name, exc.message)
                continue
            uploads.append(
                Upload(
                    m.get("filename", path.name),
                    data,
                    m.get("source", source),
                    tuple(m.get("tags", tags)),
                    m.get("created_at", created_at),
                    m.get("external_id"),
                )
            )
        for r in add_images(svc, collection, uploads, progress=progress):
            added += r.status == "added"
            present += r.status == "present"
    progress.flush()
    return {"added": added, "present": present, "failed": progress.failed, "total": len(files)}


def _read_file(path: Path, max_bytes: int, data_root: Path | None) -> bytes:
    if data_root is not None:
        return read_under(data_root, path, max_bytes)
    if path.stat().st_size > max_bytes:
        raise PayloadTooLarge(f"file is over {max_bytes} bytes")
    return path.read_bytes()


def repair_unindexed(
    svc: Services,
    collection: str,
    batch: int = BATCH,
    older_than_s: float | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Index rows a killed add or load left with indexed=0 (from their stored images); returns
    how many.

    older_than_s: only rows added longer ago than that (by added_at). With HOLDER_DEAD_AFTER_S
    (a folder add, the server's periodic repair in operations/unindexed_repair.py) that is a
    dead add's rows and never a live add's, which inserts a chunk's rows just before encoding
    them; and nothing while a writer that is not a job (a command-line load) holds a live lease
    on the collection (operations.stores.sql_writer_leases). None: every row without its vector
    (`imgsearch repair`, the operator's command).
    The call ends: a store error ends it with that error (what was indexed stays indexed), a
    row that cannot be decoded is deleted, rows added after it began are never its business,
    and a row it meets again after indexing it (its mark did not hold) ends it with a warning
    instead of a loop. `should_stop` is asked between batches (a server that is stopping).
    """
    collection = svc.store_name(collection, write=True)  # one collection for the whole call
    # A live writer that is not a job (a command-line load) may keep rows waiting for their
    # vectors past the age bound; only the operator's unbounded repair goes ahead of it.
    if older_than_s is not None and svc.writers is not None and (writing := svc.writers.live_on(collection)):
        log.info("repair of %s left for later: %s writes to it", collection, "; ".join(writing))
        return 0
    # Its making before any row is read: a vector write is refused (409) once another replica
    # has dropped the collection and made it again, whose new images may hold the same ids.
    made = svc.vectors.incarnation(collection, fresh=True)
    encoder = None  # asked for once there is something to encode
    added_before = None if older_than_s is None else int(time.time() - older_than_s)
    repaired = 0
    seen: set[int] = set()
    while not (should_stop is not None and should_stop()):
        ids = svc.images.unindexed_ids(collection, batch, added_before)
        if not ids:
            break
        if again := seen.intersection(ids):
            log.warning(
                "rows %s of %s are still not marked indexed after this repair indexed them; stopping",
                sorted(again)[:10],
                collection,
            )
            break
        seen.update(ids)
        rows = svc.images.get_rows(collection, ids, with_image=True)
        images, keep = [], []
        for image_id in ids:
            try:
                images.append(decode_b64_image(rows[image_id].image_b64 or "", svc.settings.max_image_pixels))
                keep.append(image_id)
            except (ServiceError, ValueError, KeyError) as exc:
                log.warning("row %s of %s cannot be decoded (%s); removing it", image_id, collection, exc)
                svc.images.delete(collection, [image_id])
        if not keep:
            continue
        encoder = encoder or svc.encoder_for(collection)
        vectors = encoder.encode_images(images)
        # A row a live writer indexed while this batch was encoded keeps that writer's vector
        # (a command-line load, not a job, may write features from its dataset file).
        if already := svc.images.indexed_ids(collection, keep):
            mask = [i not in already for i in keep]
            keep, vectors = [i for i in keep if i not in already], vectors[mask]
            if not keep:
                continue
        attrs = [VectorAttrs(rows[i].source, rows[i].tags, rows[i].created_at) for i in keep]
        svc.vectors.upsert(
            collection, keep, vectors, attrs, visible=False, model=encoder.model_name, incarnation=made
        )
        svc.images.mark_indexed(collection, keep)
        repaired += len(keep)
        metrics.REPAIRED_ROWS.inc(len(keep))
    if repaired:
        svc.vectors.wait_visible(collection)
    return repaired
