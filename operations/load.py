"""Load a Chinese-CLIP dataset split into both stores.

Streaming in batches keeps memory bounded whatever the split's size: images
come line by line from the tsv (or the LMDB), and each image's feature is read
by id through `FeatureIndex` (offsets only, not features, are held).

Order per batch: SQL rows (indexed=0) -> Milvus upsert -> mark indexed=1.
A run killed anywhere leaves at worst rows not yet marked; running the load
again skips what is marked, upserts the rest (upsert never duplicates) and
marks it. So no vector is ever without its row, and the re-run finishes with
no image row left without its vector.

The batches run through a three-stage pipeline (`operations.pipeline`): reading
and making batches, SQL inserts, Milvus upserts, so the three overlap. On MySQL
several SQL writers (connections) insert different batches at once
(LOAD_SQL_WRITERS), so the server works on one batch while another connection
waits; batches are independent (distinct ids), so their order does not matter.
Measurements: bench/README.md, "Load".

With `bulk_import` (a Milvus server only), the vector stage writes import files instead of
upserting, the server imports them, and rows are marked indexed once their file's rows are
visible: operations/bulk_import.py (the SQL rows are written as above).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from datasets.formats import (
    BadRecord,
    FeatureIndex,
    FeatureRecord,
    ImageRecord,
    dataset_paths,
    iter_image_tsv,
)
from datasets.lmdb_io import iter_lmdb_images
from operations.bulk_import import ROWS_PER_FILE, BulkImporter
from operations.context import Services
from operations.data_root import check_under, opened_under
from operations.domain import ImageRow, IndexSpec, VectorAttrs
from operations.encoding.base import Encoder
from operations.errors import Conflict, NotFound, PayloadTooLarge, ServiceError
from operations.images import decode_b64_image, probe, sha256_hex
from operations.names import check_label
from operations.ocr import enable_ocr, ocr_enabled, read_backlog
from operations.pipeline import Stage, run_stages
from operations.progress import Progress
from operations.stores.sql_writer_leases import held

log = logging.getLogger(__name__)


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
    # --bulk-import: files imported, files of a killed run settled, rows upserted instead
    bulk_import: dict | None = None

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
    bulk_import: bool = False,
    bulk_file_rows: int | None = None,
    writer: str | None = None,
) -> LoadReport:
    """Load `split` of `dataset_dir` into `collection`; see the module docstring.

    The steps: open the split (images, optional features), then run batches through the
    pipeline read+make -> SQL rows -> vectors + mark indexed, then flush the collection.
    With `data_root` (every load the server runs), each file is opened and checked to lie
    under it before it is read (operations.data_root). `bulk_import`: the vectors go through
    the server's import of files (operations.bulk_import), `bulk_file_rows` rows a file.
    `writer` (a load that is not a job: the command line's, described): the load holds a writer
    lease on its collection while it runs, so the servers' automatic repair leaves its waiting
    rows alone (operations.stores.sql_writer_leases)."""
    with contextlib.ExitStack() as stack:

        def readable(path: Path) -> Path:
            if data_root is None:
                return path
            return Path(stack.enter_context(opened_under(data_root, path)))

        def lease(store: str) -> None:
            if writer is not None:
                stack.enter_context(held(svc.writers, store, writer))

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
            bulk_import,
            bulk_file_rows,
            lease,
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
    bulk_import: bool = False,
    bulk_file_rows: int | None = None,
    lease: Callable[[str], None] = lambda store: None,
) -> LoadReport:
    started = time.perf_counter()
    # Resolved once (operations.aliases): every batch goes to the same collection, and a switch
    # of the name under the load fails it (503) rather than leave batches behind.
    collection = svc.store_name(collection, write=True)
    lease(collection)  # before any row is written
    if data_root is not None:
        dataset_dir = check_under(data_root, dataset_dir)
    if not Path(dataset_dir).is_dir():
        raise NotFound(f"dataset directory {dataset_dir} does not exist")
    source = check_label(source or Path(dataset_dir).name or "dataset", "source")
    # The split's files are opened (and checked) before the collection is made.
    paths = dataset_paths(dataset_dir, split)
    feat_file = readable(paths.img_feat) if paths.img_feat.is_file() else None
    records, total, origin = _image_source(Path(dataset_dir), split, readable, data_root)
    bulk: BulkImporter | None = None
    if bulk_import:  # refused on Milvus Lite before anything is created
        bulk = BulkImporter(svc, collection, progress, lambda n: None, bulk_file_rows or ROWS_PER_FILE)
    is_new = not svc.vectors.has_collection(collection)
    encoder = svc.ensure_collection(collection, encoder, index, expected_vectors=total or 0)
    # The making of the collection the load writes into: every vector write checks it, since
    # another replica may drop the name and make it again (same model or not) while a long
    # load runs, and the new collection's own images may hold the ids this load writes.
    made = svc.vectors.incarnation(collection, fresh=True)
    if bulk is not None:
        bulk.model, bulk.incarnation = encoder.model_name, made
    if is_new and svc.settings.ocr_enabled:
        enable_ocr(svc, collection)
    progress.set_total(total)
    split_load = _SplitLoad(
        svc,
        collection,
        split,
        progress,
        source,
        encoder,
        records,
        total,
        origin,
        paths.img_feat.name,
        feat_file,
        made,
    )
    if bulk is not None:
        bulk.on_indexed = split_load.indexed
        split_load.bulk = bulk
        bulk.recover()
    writers = svc.settings.load_sql_writers if svc.images.parallel_writes else 1
    try:
        run_stages(
            split_load.batches(batch_size or svc.settings.load_batch_size),
            [
                Stage("load-sql", split_load.write_rows, workers=writers, queue_size=writers + 1),
                Stage(
                    "load-milvus",
                    split_load.index_vectors if bulk is None else split_load.import_vectors,
                    queue_size=2,
                ),
            ],
            cancelled=progress.cancelled,
        )
        if bulk is not None:
            bulk.finish()  # also after a cancel: what was written is imported and marked
    finally:
        if bulk is not None:
            bulk.close()
        split_load.close()
        progress.flush()
    svc.vectors.flush(collection, bulk=True)
    report = split_load.report
    if bulk is not None:
        report.bulk_import = {
            "files": bulk.files,
            "recovered": bulk.recovered,
            "upserted": bulk.upserted,
            "waited_s": {k: round(v, 1) for k, v in bulk.waited.items()},
        }
    if ocr_enabled(svc, collection) and not progress.cancelled():
        # The text of the loaded images is read once they are stored; each image gets a
        # record, so an interrupted load's re-run (or the OCR job) reads only the rest.
        report.ocr = read_backlog(svc, collection)
    report.failed = progress.failed
    report.failures = [{"item": i, "reason": r} for i, r in getattr(progress, "failures", [])[:100]]
    report.seconds = time.perf_counter() - started
    log.info("load %s/%s into %s: %s", dataset_dir, split, collection, report.as_dict())
    return report


class _SplitLoad:
    """One load of one split: its sources and counters, and the work of each pipeline stage.

    `batches` runs in the calling thread; `write_rows` on the SQL writers (several at once on
    MySQL); `index_vectors` on one thread. Counters shared between them take `_lock`."""

    def __init__(
        self,
        svc: Services,
        collection: str,
        split: str,
        progress: Progress,
        source: str,
        encoder: Encoder,
        records: Iterator[ImageRecord | BadRecord],
        total: int | None,
        origin: str,
        feat_name: str,
        feat_file: Path | None,
        made: int | None,
    ) -> None:
        self.svc, self.collection, self.progress = svc, collection, progress
        self.made = made  # the collection's making the load began on (VectorStore.incarnation)
        self.source, self.encoder = source, encoder
        self.records, self.origin, self.feat_name = records, origin, feat_name
        self.features: FeatureIndex | None = None
        if feat_file is not None:
            self.features = FeatureIndex(feat_file, "image_id", encoder.dim)
            _check_feature_dim(feat_file, feat_name, encoder)
            for bad in self.features.bad:
                if bad.record_id is None:
                    progress.fail(f"{feat_name} line {bad.line_no}", bad.reason)
        self.report = LoadReport(collection, split, total)
        self.now = int(time.time())
        self._lock = threading.Lock()
        self.bulk: BulkImporter | None = None

    def close(self) -> None:
        if self.features is not None:
            self.features.close()

    # --- stage 1 (calling thread): read records, make batches of rows and vectors ----------
    def batches(self, batch_size: int) -> Iterator[_Batch]:
        chunk: list[ImageRecord] = []
        for rec in self.records:
            if isinstance(rec, BadRecord):
                self.progress.fail(f"{self.origin} line {rec.line_no}", rec.reason)
                continue
            chunk.append(rec)
            if len(chunk) >= batch_size:
                if (batch := self._make_batch(chunk)) is not None:
                    yield batch
                chunk = []
        if chunk and (batch := self._make_batch(chunk)) is not None:
            yield batch

    def _make_batch(self, chunk: list[ImageRecord]) -> _Batch | None:
        rows, vectors, pending_images = [], [], []
        # Stamped per batch, not per load: a row waiting for its vector longer than
        # HOLDER_DEAD_AFTER_S is taken for a dead writer's by the servers' periodic repair
        # (operations/unindexed_repair.py), and a command-line load is no job it could skip.
        added_at = int(time.time())
        looked_up = self.features.get_many([r.image_id for r in chunk]) if self.features else {}
        for rec in chunk:
            where = f"{self.origin} line {rec.line_no} (image {rec.image_id})"
            try:
                mime, width, height = probe(rec.data)
                if width * height > self.svc.settings.max_image_pixels:
                    limit = self.svc.settings.max_image_pixels
                    raise PayloadTooLarge(f"image has {width}x{height} pixels; the limit is {limit} pixels")
            except ServiceError as exc:
                self.progress.fail(where, exc.message)
                continue
            if self.features is not None:
                vector = self._feature(rec, looked_up.get(rec.image_id), where)
                if vector is None:
                    continue
                vectors.append(vector)
            else:
                try:
                    pending_images.append(decode_b64_image(rec.b64, self.svc.settings.max_image_pixels))
                except Exception as exc:  # each bad image is reported, the rest loads
                    self.progress.fail(where, getattr(exc, "message", str(exc)))
                    continue
            rows.append(
                ImageRow(
                    id=rec.image_id,
                    sha256=sha256_hex(rec.data),
                    image_b64=rec.b64,
                    mime=mime,
                    width=width,
                    height=height,
                    source=self.source,
                    created_at=self.now,
                    added_at=added_at,
                )
            )
        if not rows:
            return None
        matrix = self.encoder.encode_images(pending_images) if self.features is None else np.stack(vectors)
        return _Batch(rows, _renormalise(matrix))

    def _feature(
        self, rec: ImageRecord, feat: FeatureRecord | BadRecord | None, where: str
    ) -> np.ndarray | None:
        """The record's feature vector, or None after reporting why it cannot be used."""
        name = self.feat_name
        if feat is None:
            self.progress.fail(where, f"no feature for image {rec.image_id} in {name}")
            return None
        if isinstance(feat, BadRecord):
            self.progress.fail(f"{name} line {feat.line_no} (image {rec.image_id})", feat.reason)
            return None
        if not np.isfinite(feat.vector).all() or not np.linalg.norm(feat.vector) > 0:
            self.progress.fail(
                f"{name} line {feat.line_no} (image {rec.image_id})", "feature is all zeros or not finite"
            )
            return None
        return feat.vector

    # --- stage 2 (SQL writers): rows in with indexed=0; what is already indexed is counted ----
    def write_rows(self, batch: _Batch) -> _Batch | None:
        images, progress = self.svc.images, self.progress
        done = images.indexed_ids(self.collection, [r.stored_id() for r in batch.rows])
        with self._lock:
            self.report.already_loaded += len(done)
        progress.advance(len(done))
        todo = [r for r in batch.rows if r.id not in done]
        if not todo:
            return None
        result = images.insert_rows(self.collection, todo)
        for dup, holder in result.duplicate_of.items():
            progress.fail(f"image {dup}", f"same bytes as stored image {holder}; not stored twice")
        for image_id, reason in result.rejected.items():
            progress.fail(f"image {image_id}", reason)
        keep = set(result.inserted) | set(result.already_present)
        mask = [r.id in keep for r in batch.rows]
        batch.vectors = batch.vectors[np.array(mask, dtype=bool)]
        batch.rows = [r for r, m in zip(batch.rows, mask, strict=True) if m]
        batch.ids_to_index = [r.stored_id() for r in batch.rows]
        return batch

    # --- stage 3 (one thread): vectors upserted, then the rows marked indexed=1 -------------
    def index_vectors(self, batch: _Batch) -> None:
        if not batch.ids_to_index:
            return
        attrs = [VectorAttrs(r.source, r.tags, r.created_at) for r in batch.rows]
        self.svc.vectors.upsert(
            self.collection,
            batch.ids_to_index,
            batch.vectors,
            attrs,
            visible=False,
            model=self.encoder.model_name,
            incarnation=self.made,
        )
        self.svc.images.mark_indexed(self.collection, batch.ids_to_index)
        self.indexed(len(batch.ids_to_index))

    def indexed(self, n: int) -> None:
        """`n` rows of this run now have their vectors (and are marked indexed)."""
        with self._lock:
            self.report.loaded += n
        self.progress.advance(n)

    # --- stage 3 with --bulk-import: vectors into import files (operations.bulk_import) -----
    def import_vectors(self, batch: _Batch) -> None:
        if not batch.ids_to_index or self.bulk is None:
            return
        attrs = [VectorAttrs(r.source, r.tags, r.created_at) for r in batch.rows]
        self.bulk.add(batch.ids_to_index, batch.vectors, attrs)


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
