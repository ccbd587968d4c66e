"""Load a Chinese-CLIP dataset split into both stores.

Streaming in batches keeps memory bounded whatever the split's size: images
come line by line from the tsv (or the LMDB), and each image's feature is read
by id through `FeatureIndex` (offsets only, not features, are held).

Order per batch: SQL rows (indexed=0) -> Milvus upsert -> mark indexed=1.
A run killed anywhere leaves at worst rows not yet marked; running the load
again skips what is marked, upserts the rest (upsert never duplicates) and
marks it. So no vector is ever without its row, and the re-run finishes with
no image row left without its vector. Threads overlap reading/parsing, the
SQL inserts and the Milvus upserts. On MySQL several SQL writers (connections)
insert different batches at once, so the server can work on one batch while
the other connection waits (measured on 2 shared cores: 1.07x over one writer,
within the noise; more cores for MariaDB should gain more). Batches are
independent (distinct ids), so their order does not matter.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from datasets.formats import BadRecord, FeatureIndex, ImageRecord, dataset_paths, iter_image_tsv
from datasets.lmdb_io import iter_lmdb_images
from operations.context import Services
from operations.data_root import check_under, opened_under
from operations.domain import ImageRow, IndexSpec, VectorAttrs
from operations.encoding.base import Encoder
from operations.errors import Conflict, NotFound, PayloadTooLarge, ServiceError
from operations.images import decode_b64_image, probe, sha256_hex
from operations.names import check_label
from operations.ocr import enable_ocr, ocr_enabled, read_backlog
from operations.progress import Progress

log = logging.getLogger(__name__)
_DONE = object()


@dataclass
class LoadReport:
    collection: str
    split: str
    total: int | None
    loaded: int = 0
    already_loaded: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)
    ocr: dict | None = None  # collections with OCR: images read and failed after the load

    def as_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = (
            round((self.loaded + self.already_loaded) / self.seconds, 1) if self.seconds else None
        )
        return d


@dataclass
class _Batch:
    rows: list[ImageRow]
    vectors: np.ndarray
    ids_to_index: list[int] = field(default_factory=list)


def count_lines(path: Path) -> int:
    """Non-empty lines, counted in 1 MB chunks (cheap next to loading)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _image_source(
    dataset_dir: Path, split: str, readable: Callable[[Path], Path], data_root: Path | None
) -> tuple[Iterator[ImageRecord | BadRecord], int | None, str]:
    paths = dataset_paths(dataset_dir, split)
    if paths.imgs_tsv.is_file():
        tsv = readable(paths.imgs_tsv)
        return iter_image_tsv(tsv), count_lines(tsv), paths.imgs_tsv.name
    if paths.lmdb_imgs.is_dir():
        if data_root is not None:
            # LMDB opens its own files by name: their real paths are checked just before.
            for part in (paths.lmdb_split, paths.lmdb_imgs, paths.lmdb_imgs / "data.mdb"):
                check_under(data_root, part)
        return iter_lmdb_images(paths.lmdb_split), None, f"lmdb/{split}/imgs"
    raise NotFound(
        f"split {split!r} has neither {paths.imgs_tsv.name} nor lmdb/{split}/imgs in {dataset_dir}"
    )


def load_split(
    svc: Services,
    collection: str,
    dataset_dir: Path,
    split: str,
    progress: Progress,
    *,
    source: str | None = None,
    batch_size: int | None = None,
    index: IndexSpec | None = None,
    encoder: Encoder | None = None,
    data_root: Path | None = None,
) -> LoadReport:
    """Load `split` of `dataset_dir` into `collection`; see the module docstring.

    With `data_root` (every load the server runs), each file is opened and
    checked to lie under it before it is read (operations.data_root).
    """
    with contextlib.ExitStack() as files:

        def readable(path: Path) -> Path:
            if data_root is None:
                return path
            return Path(files.enter_context(opened_under(data_root, path)))

        return _load_split(
            svc,
            collection,
            dataset_dir,
            split,
            progress,
            source,
            batch_size,
            index,
            encoder,
            readable,
            data_root,
        )


def _load_split(
    svc: Services,
    collection: str,
    dataset_dir: Path,
    split: str,
    progress: Progress,
    source: str | None,
    batch_size: int | None,
    index: IndexSpec | None,
    encoder: Encoder | None,
    readable: Callable[[Path], Path],
    data_root: Path | None,
) -> LoadReport:
    started = time.perf_counter()
    if data_root is not None:
        dataset_dir = check_under(data_root, dataset_dir)
    if not Path(dataset_dir).is_dir():
        raise NotFound(f"dataset directory {dataset_dir} does not exist")
    source = check_label(source or Path(dataset_dir).name or "dataset", "source")
    batch_size = batch_size or svc.settings.load_batch_size
    paths = dataset_paths(dataset_dir, split)
    feat_file = readable(paths.img_feat) if paths.img_feat.is_file() else None
    records, total, origin = _image_source(Path(dataset_dir), split, readable, data_root)
    is_new = not svc.vectors.has_collection(collection)
    encoder = svc.ensure_collection(collection, encoder, index)
    if is_new and svc.settings.ocr_enabled:
        enable_ocr(svc, collection)
    progress.set_total(total)
    features = FeatureIndex(feat_file, "image_id", encoder.dim) if feat_file is not None else None
    if features is not None:
        _check_feature_dim(feat_file, paths.img_feat.name, encoder)
    if features is not None:
        for bad in features.bad:
            if bad.record_id is None:
                progress.fail(f"{paths.img_feat.name} line {bad.line_no}", bad.reason)
    report = LoadReport(collection, split, total)
    now = int(time.time())

    def make_batch(chunk: list[ImageRecord]) -> _Batch | None:
        rows, vectors, pending_images = [], [], []
        looked_up = features.get_many([r.image_id for r in chunk]) if features else {}
        for rec in chunk:
            try:
                mime, width, height = probe(rec.data)
                if width * height > svc.settings.max_image_pixels:
                    limit = svc.settings.max_image_pixels
                    raise PayloadTooLarge(f"image has {width}x{height} pixels; the limit is {limit} pixels")
            except ServiceError as exc:
                progress.fail(f"{origin} line {rec.line_no} (image {rec.image_id})", exc.message)
                continue
            if features is not None:
                feat = looked_up.get(rec.image_id)
                if feat is None:
                    progress.fail(
                        f"{origin} line {rec.line_no} (image {rec.image_id})",
                        f"no feature for image {rec.image_id} in {paths.img_feat.name}",
                    )
                    continue
                if isinstance(feat, BadRecord):
                    progress.fail(
                        f"{paths.img_feat.name} line {feat.line_no} (image {rec.image_id})", feat.reason
                    )
                    continue
                if not np.isfinite(feat.vector).all() or not np.linalg.norm(feat.vector) > 0:
                    progress.fail(
                        f"{paths.img_feat.name} line {feat.line_no} (image {rec.image_id})",
                        "feature is all zeros or not finite",
                    )
                    continue
                vectors.append(feat.vector)
            else:
                try:
                    pending_images.append(decode_b64_image(rec.b64, svc.settings.max_image_pixels))
                except Exception as exc:  # each bad image is reported, the rest loads
                    progress.fail(
                        f"{origin} line {rec.line_no} (image {rec.image_id})",
                        getattr(exc, "message", str(exc)),
                    )
                    continue
            rows.append(
                ImageRow(
                    id=rec.image_id,
                    sha256=sha256_hex(rec.data),
                    image_b64=rec.b64,
                    mime=mime,
                    width=width,
                    height=height,
                    source=source,
                    created_at=now,
                    added_at=now,
                )
            )
        if not rows:
            return None
        matrix = encoder.encode_images(pending_images) if features is None else np.stack(vectors)
        return _Batch(rows, _renormalise(matrix))

    writers = svc.settings.load_sql_writers if svc.images.parallel_writes else 1
    sql_q: queue.Queue = queue.Queue(maxsize=writers + 1)
    milvus_q: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    counts_lock = threading.Lock()

    def sql_batch(batch: _Batch) -> None:
        ids = [r.id for r in batch.rows]
        done = svc.images.indexed_ids(collection, ids)
        with counts_lock:
            report.already_loaded += len(done)
        progress.advance(len(done))
        todo = [r for r in batch.rows if r.id not in done]
        if not todo:
            return
        result = svc.images.insert_rows(collection, todo)
        for dup, holder in result.duplicate_of.items():
            progress.fail(f"image {dup}", f"same bytes as stored image {holder}; not stored twice")
        for image_id, reason in result.rejected.items():
            progress.fail(f"image {image_id}", reason)
        keep = set(result.inserted) | set(result.already_present)
        mask = [r.id in keep for r in batch.rows]
        batch.ids_to_index = [r.id for r, m in zip(batch.rows, mask, strict=True) if m]
        batch.vectors = batch.vectors[np.array(mask, dtype=bool)]
        batch.rows = [r for r, m in zip(batch.rows, mask, strict=True) if m]
        milvus_q.put(batch)

    def milvus_batch(batch: _Batch) -> None:
        if not batch.ids_to_index:
            return
        attrs = [VectorAttrs(r.source, r.tags, r.created_at) for r in batch.rows]
        svc.vectors.upsert(collection, batch.ids_to_index, batch.vectors, attrs, visible=False)
        svc.images.mark_indexed(collection, batch.ids_to_index)
        with counts_lock:
            report.loaded += len(batch.ids_to_index)
        progress.advance(len(batch.ids_to_index))

    def stage(q: queue.Queue, work) -> None:
        # Keep draining after an error so a producer never blocks on a full queue.
        while (batch := q.get()) is not _DONE:
            if errors:
                continue
            try:
                work(batch)
            except BaseException as exc:
                errors.append(exc)

    sql_threads = [
        threading.Thread(target=stage, args=(sql_q, sql_batch), name=f"load-sql-{i}", daemon=True)
        for i in range(writers)
    ]
    milvus_thread = threading.Thread(
        target=stage, args=(milvus_q, milvus_batch), name="load-milvus", daemon=True
    )
    for t in (*sql_threads, milvus_thread):
        t.start()
    try:
        chunk: list[ImageRecord] = []
        for rec in records:
            if errors or progress.cancelled():
                break
            if isinstance(rec, BadRecord):
                progress.fail(f"{origin} line {rec.line_no}", rec.reason)
                continue
            chunk.append(rec)
            if len(chunk) >= batch_size:
                if (batch := make_batch(chunk)) is not None:
                    sql_q.put(batch)
                chunk = []
        if chunk and not errors and (batch := make_batch(chunk)) is not None:
            sql_q.put(batch)
    finally:
        for _ in sql_threads:
            sql_q.put(_DONE)
        for t in sql_threads:
            t.join()
        milvus_q.put(_DONE)
        milvus_thread.join()
        if features is not None:
            features.close()
        progress.flush()
    if errors:
        raise errors[0]
    svc.vectors.flush(collection, bulk=True)
    if ocr_enabled(svc, collection) and not progress.cancelled():
        # The text of the loaded images is read once they are stored; each image gets a
        # record, so an interrupted load's re-run (or the OCR job) reads only the rest.
        report.ocr = read_backlog(svc, collection)
    report.failed = progress.failed
    report.failures = [{"item": i, "reason": r} for i, r in getattr(progress, "failures", [])[:100]]
    report.seconds = time.perf_counter() - started
    log.info("load %s/%s into %s: %s", dataset_dir, split, collection, report.as_dict())
    return report


def _check_feature_dim(path: Path, name: str, encoder: Encoder) -> None:
    """Refuse a features file of another model at once, not as one failure per line."""
    with open(path, "rb") as f:
        for line in f:
            try:
                dim = len(orjson.loads(line)["feature"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a broken line is reported with its number later
            if dim != encoder.dim:
                raise Conflict(
                    f"{name} holds {dim}-d features; the model {encoder.model_name} makes "
                    f"{encoder.dim}-d vectors: extract features with this model or load another one"
                )
            return


def _renormalise(matrix: np.ndarray) -> np.ndarray:
    """Features files should be normalised; make sure, in float32 (the metric is IP)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
