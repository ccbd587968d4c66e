"""Rebuild a collection into a new one (another model or index) and switch its name over.

A rebuild job (kind "rebuild", on the name clients use, e.g. "images") writes everything the
name holds into a new collection, "images__vN", then checks it and, when asked, switches:

1. create the new collection: the model asked for (default: the current one) and the index
   asked for (default: the current one; AUTO chooses for the current size, so a collection
   that grew past AUTO's size gets its HNSW index this way);
2. copy: the SQL rows (with their pHashes and OCR text) are copied in SQL by id
   (INSERT..SELECT, ids present skipped); the vectors are copied from the old collection when
   the model is the same (an index change; a row the old one has no vector for is encoded) and
   encoded from the stored images when it is not;
3. catch up: the ids of both sides are compared again and adds and deletes made meanwhile are
   applied, until a pass finds nothing (searches and writes keep using the old collection all
   along);
4. check: Recall@1/5/10 of the new collection (and of the current one, for comparison) on a
   labelled split (`${split}_texts.jsonl`, each caption with its matching image ids, the
   images already in the collection), in the job's message;
5. switch (`switch: true` and the recall check met, or later `POST .../switch`): writes to the
   name are held off (503 Retry-After) for REBUILD_SWITCH_GRACE_S so writes under way finish,
   the last writes are copied, and the name is pointed at the new collection in one SQL
   update (operations.aliases); the Milvus alias of the same name is moved too. Searches on
   this replica move at once, on others within ALIAS_REFRESH_S. The old collection is kept
   (listed, searchable by its own name) until dropped.

Every step is idempotent, so a job restarted from the top (resume, takeover) picks up where it
was: the new collection's name is fixed when the job is submitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.formats import BadRecord, iter_texts
from operations.aliases import VERSION_SUFFIX, StoreName
from operations.context import Services
from operations.data_root import opened_under
from operations.domain import IndexSpec, VectorAttrs
from operations.errors import Conflict, InvalidInput, NotFound, ServiceError
from operations.evaluation.recall import recall_scores
from operations.images import decode_b64_image
from operations.names import validate_name
from operations.ocr import ocr_enabled, ocr_store
from operations.progress import Counter, Progress
from operations.relevance.calibrate import labelled_split_paths

log = logging.getLogger(__name__)

# Rows copied, and images encoded, per step.
PAGE = 500
ENCODE_BATCH = 32
# Catch-up passes before the switch gives up waiting for writes to stop (each pass copies what
# arrived during the one before; a steady stream of writes is finished by the switch's fence).
CATCH_UP_PASSES = 3
RECALL_KS = (1, 5, 10)


@dataclass
class SyncCounts:
    copied: int = 0
    deleted: int = 0
    vectors: int = 0
    failed: int = 0

    def add(self, other: SyncCounts) -> None:
        self.copied += other.copied
        self.deleted += other.deleted
        self.vectors += other.vectors
        self.failed += other.failed


def _require_aliases(svc: Services) -> None:
    if svc.aliases is None:
        raise Conflict("rebuilds need the SQL image store (MySQL or SQLite), which holds the name table")


def version_name(alias: str, n: int) -> str:
    return validate_name(f"{alias}{VERSION_SUFFIX}{n}")


def next_version(svc: Services, alias: str) -> str:
    """The first free "alias__vN" (N >= 2: a collection made before aliases becomes v1)."""
    assert svc.aliases is not None
    taken = set(svc.vectors.list_collections()) | set(svc.aliases.rows(fresh=True))
    n = 2
    while f"{alias}{VERSION_SUFFIX}{n}" in taken:
        n += 1
    return version_name(alias, n)


def rebuild_params(
    svc: Services,
    alias: str,
    model: str | None = None,
    index: IndexSpec | None = None,
    dataset_dir: str | None = None,
    split: str | None = None,
    min_recall: float | None = None,
    switch: bool = False,
) -> dict:
    """Check a rebuild request and fix its target name: the job's stored parameters."""
    _require_aliases(svc)
    validate_name(alias)
    row = svc.aliases.rows(fresh=True).get(alias) if svc.aliases else None
    if row is not None and row.kind == "version":
        raise InvalidInput(f"{alias!r} is a version of a rebuilt collection: rebuild the name clients use")
    svc.require_collection(alias)
    if model is not None:
        svc.encoders.get(model)  # 409 unless configured here
    if index is not None:
        index.check(allow_auto=True)
        # The source partitions are the collection's own (a rebuild changes model or index).
        current = svc.vectors.describe_meta(svc.store_name(alias)).index
        index = dataclasses.replace(
            index, source_partitions=current.source_partitions, time_partitions=current.time_partitions
        )
    if (dataset_dir is None) != (split is None):
        raise InvalidInput("the recall check needs both dataset_dir and split")
    if min_recall is not None and split is None:
        raise InvalidInput("min_recall needs a labelled split (dataset_dir and split) to check")
    target = next_version(svc, alias)
    return {
        "target": target,
        "model": model,
        "index": index.__dict__ if index is not None else None,
        "dataset_dir": dataset_dir,
        "split": split,
        "min_recall": min_recall,
        "switch": bool(switch),
    }


def run_rebuild(
    svc: Services,
    alias: str,
    params: dict,
    progress: Progress,
    job_id: str = "",
    data_root: Path | None = None,
) -> str:
    """The rebuild job (see the module docstring); its message says what it built and measured.

    data_root: the split's files are opened and checked to lie under it (a job the server runs)."""
    _require_aliases(svc)
    target = StoreName(params["target"])
    source = svc.store_name(alias, write=False)
    if source == target:
        return f"{alias!r} already points at {target}: nothing to do"
    old_info = svc.vectors.describe(source)
    encoder = svc.encoders.get(params["model"]) if params.get("model") else svc.encoder_for(source)
    if params.get("index"):
        index = IndexSpec(**params["index"])
    else:  # the current index, re-chosen when AUTO chose it
        current = old_info.index
        auto = dataclasses.replace(current, type="AUTO", build_params={}, search_params={}, auto=False)
        index = auto if current.auto else current
    svc.ensure_collection(target, encoder, index, expected_vectors=old_info.count)
    if ocr_enabled(svc, source):
        ocr_store(svc).enable(target)
    same_model = encoder.model_name == old_info.model_name and encoder.dim == old_info.dim
    progress.set_total(svc.images.count(source))
    counts = SyncCounts()
    for _ in range(CATCH_UP_PASSES):
        if progress.cancelled():
            return f"cancelled; {target} is kept half built (the job resumes it)"
        step = sync(svc, source, target, same_model, progress)
        counts.add(step)
        if not (step.copied or step.deleted or step.vectors):
            break
    svc.vectors.flush(target, bulk=True)
    info = svc.vectors.describe(target)
    parts = [
        f"built {target} ({info.model_name}, {info.index.type}) from {source}: {info.count} vectors, "
        f"copied {counts.copied} rows, encoded or copied {counts.vectors} vectors "
        f"({'copied, same model' if same_model else 'encoded from the stored images'}), "
        f"removed {counts.deleted} deleted meanwhile, failed {counts.failed}"
    ]
    ok = True
    if params.get("split"):
        new = measure_recall(svc, target, Path(params["dataset_dir"]), params["split"], data_root)
        old = measure_recall(svc, source, Path(params["dataset_dir"]), params["split"], data_root)
        parts.append(f"recall on {params['split']} ({new['queries']} captions): {target} {_fmt(new)}")
        parts.append(f"{source} {_fmt(old)}")
        if params.get("min_recall") is not None:
            ok = new["r10"] >= float(params["min_recall"])
            parts.append(f"recall@10 {'meets' if ok else 'is below'} min_recall {params['min_recall']}")
    if params.get("switch") and ok and not progress.cancelled():
        done = switch_to(svc, alias, target, ignore_job=job_id)
        parts.append(f"switched {alias!r} from {done['from']} to {done['to']}")
    else:
        parts.append(f'not switched: POST /img/collections/{alias}/switch {{"to": "{target}"}} switches')
    return "; ".join(parts)


def _fmt(r: dict) -> str:
    return " ".join(f"R@{k} {r[f'r{k}']:.4f}" for k in RECALL_KS)


def _all_ids(svc: Services, collection: str) -> list[int]:
    ids: list[int] = []
    after = -1
    while True:
        page = svc.images.ids_after(collection, after, 10_000)
        if not page:
            return ids
        ids += page
        after = page[-1]


def sync(
    svc: Services, source: str, target: str, same_model: bool, progress: Progress | None = None
) -> SyncCounts:
    """Make `target` hold what `source` holds: copy missing rows, remove rows gone from the
    source, write the vectors still missing (copied or encoded). Idempotent."""
    progress = progress or Counter()
    counts = SyncCounts()
    src, dst = StoreName(source), StoreName(target)
    have = set(_all_ids(svc, dst))
    wanted = _all_ids(svc, src)
    missing = [i for i in wanted if i not in have]
    gone = sorted(have - set(wanted))
    ocr = ocr_enabled(svc, src)
    for start in range(0, len(missing), PAGE):
        chunk = missing[start : start + PAGE]
        counts.copied += svc.images.copy_rows(dst, src, chunk)
        if ocr:
            ocr_store(svc).copy_rows(dst, src, chunk)
    if gone:
        svc.vectors.delete(dst, gone)
        svc.images.delete(dst, gone)
        counts.deleted = len(gone)
    # The vectors still missing: every row not marked indexed, page by page.
    after = -1
    while not progress.cancelled():
        ids = [i for i in svc.images.ids_after(dst, after, PAGE)]
        if not ids:
            break
        after = ids[-1]
        todo = sorted(set(ids) - svc.images.indexed_ids(dst, ids))
        if not todo:
            continue
        written, failed = _write_vectors(svc, src, dst, todo, same_model, progress)
        counts.vectors += written
        counts.failed += failed
        progress.advance(written)
    return counts


def _write_vectors(
    svc: Services, src: str, dst: str, ids: list[int], same_model: bool, progress: Progress
) -> tuple[int, int]:
    rows = svc.images.get_rows(dst, ids, with_image=not same_model)
    vectors: dict[int, np.ndarray] = {}
    if same_model:
        vectors = svc.vectors.get_vectors(src, ids)
    need = [i for i in ids if i in rows and i not in vectors]
    if need and same_model:
        # Rows whose vector the source lacks (an add the switch's fence cut off between its rows
        # and its vectors): encoded from their images, which the first read left out.
        rows.update(svc.images.get_rows(dst, need, with_image=True))
    failed = 0
    if need:
        encoder = svc.encoder_for(dst)
        for start in range(0, len(need), ENCODE_BATCH):
            images, kept = [], []
            for i in need[start : start + ENCODE_BATCH]:
                try:
                    images.append(decode_b64_image(rows[i].image_b64 or "", svc.settings.max_image_pixels))
                    kept.append(i)
                except (ServiceError, ValueError, OSError) as exc:
                    progress.fail(f"image {i}", f"cannot decode: {getattr(exc, 'message', exc)}")
                    failed += 1
            if images:
                vectors.update(zip(kept, encoder.encode_images(images), strict=True))
    done = [i for i in ids if i in vectors and i in rows]
    if not done:
        return 0, failed
    attrs = [VectorAttrs(rows[i].source, rows[i].tags, rows[i].created_at) for i in done]
    svc.vectors.upsert(dst, done, np.stack([vectors[i] for i in done]), attrs, visible=False)
    svc.images.mark_indexed(dst, done)
    return len(done), failed


def measure_recall(
    svc: Services, collection: str, dataset_dir: Path, split: str, data_root: Path | None = None
) -> dict:
    """Recall@1/5/10 of `collection` (its own model) for the captions of a labelled split whose
    images it holds: a caption is a hit at k when one of its image ids is in its top k."""
    paths = labelled_split_paths(dataset_dir, split)
    with contextlib.ExitStack() as files:
        texts_file = paths.texts_jsonl
        if data_root is not None:
            texts_file = Path(files.enter_context(opened_under(data_root, paths.texts_jsonl)))
        texts = [t for t in iter_texts(texts_file) if not isinstance(t, BadRecord) and t.image_ids]
    if not texts:
        raise InvalidInput(f"{paths.texts_jsonl.name} holds no caption with image_ids")
    store = StoreName(collection)
    encoder = svc.encoder_for(store)
    reference: dict[int, list[int]] = {}
    predictions: dict[int, list[int]] = {}
    for start in range(0, len(texts), 64):
        batch = texts[start : start + 64]
        feats = encoder.encode_texts([t.text for t in batch])
        hits = svc.vectors.search(store, feats, max(RECALL_KS))
        for t, row in zip(batch, hits, strict=True):
            reference[t.text_id] = list(t.image_ids)
            predictions[t.text_id] = [h.id for h in row]
    r1, r5, r10 = recall_scores(reference, predictions)
    return {"r1": r1, "r5": r5, "r10": r10, "queries": len(reference)}


def switch_to(svc: Services, alias: str, to: str, ignore_job: str = "") -> dict:
    """Point `alias` at the collection `to` (a version of it) without losing a write: see the
    module docstring, step 5. {"alias", "from", "to", "caught_up"}."""
    _require_aliases(svc)
    book = svc.aliases
    assert book is not None
    validate_name(alias)
    rows = book.rows(fresh=True)
    row = rows.get(alias)
    if row is not None and row.kind == "version":
        raise InvalidInput(f"{alias!r} is a version of a rebuilt collection, not a name to switch")
    if to == alias or not to.startswith(alias + VERSION_SUFFIX):
        raise InvalidInput(
            f"{to!r} is not a version of {alias!r} (its name starts with {alias}{VERSION_SUFFIX})"
        )
    target = book.resolve(to)
    if not svc.vectors.has_collection(target) or not svc.images.has_collection(target):
        raise NotFound(f"collection {to!r} does not exist", collection=to)
    source = book.resolve(alias, write=False) if row is not None else StoreName(alias)
    if not svc.vectors.has_collection(source):
        raise NotFound(f"collection {alias!r} does not exist", collection=alias)
    if source == target:
        return {"alias": alias, "from": _api_name(svc, source), "to": to, "caught_up": 0}
    if svc.jobs is not None:
        try:
            busy = [j for j in svc.jobs.active_on(alias) if j != ignore_job]
        except NotFound:  # no job table yet (the command line before any server ran)
            busy = []
        if busy:
            raise Conflict(
                f"jobs are writing to {alias!r} ({', '.join(busy)}): switch once they end", jobs=busy
            )
    # A plain collection (made before aliases) keeps its data under its own name: it stays
    # addressable as version 1 once the name points elsewhere.
    versions: dict[str, str] = {}
    if source == alias:
        v1 = version_name(alias, 1)
        if v1 in rows or svc.vectors.has_collection(StoreName(v1)):
            raise Conflict(f"{v1!r} is taken: it would name the current {alias!r} after the switch")
        versions[v1] = alias
    s = svc.settings
    same_model = svc.vectors.describe_meta(source).model_name == svc.vectors.describe_meta(target).model_name
    started = time.monotonic()
    book.store.fence(alias, source, s.rebuild_fence_s)
    book.forget()
    switched = False
    try:
        time.sleep(s.rebuild_switch_grace_s)  # writes that resolved the name before the fence
        counts = sync(svc, source, target, same_model)
        svc.vectors.flush(target, bulk=True)
        if time.monotonic() - started >= s.rebuild_fence_s:
            raise Conflict(
                f"the last writes took longer to copy than REBUILD_FENCE_S ({s.rebuild_fence_s:g} s): "
                "nothing switched; switch again"
            )
        _point_milvus_alias(svc, alias, target)
        if not book.store.switch(alias, target, versions):
            raise Conflict("the switch's fence lapsed before the switch: nothing switched; switch again")
        switched = True
    finally:
        if not switched:
            try:
                book.store.unfence(alias)
            except ServiceError as exc:  # the fence lapses by itself within REBUILD_FENCE_S
                log.warning("could not lift the write fence of %s: %s", alias, exc.message)
        book.forget()
    log.info("switched %s from %s to %s (caught up %d rows)", alias, source, target, counts.copied)
    return {
        "alias": alias,
        "from": _api_name(svc, source),
        "to": to,
        "caught_up": counts.copied + counts.deleted,
    }


def _api_name(svc: Services, store: str) -> str:
    """The name a client uses for the collection stored as `store` (v1 for a pre-alias one)."""
    assert svc.aliases is not None
    return next(
        (r.name for r in svc.aliases.rows().values() if r.kind == "version" and r.target == store), store
    )


def _point_milvus_alias(svc: Services, alias: str, target: str) -> None:
    """Move the Milvus alias of the name too (for clients that read Milvus directly)."""
    point = getattr(svc.vectors, "point_alias", None)
    if point is not None and not point(alias, StoreName(target)):
        log.info(
            "Milvus alias %s not set: a collection still carries that name (it becomes an alias "
            "once that collection is dropped); the service follows its SQL name table",
            alias,
        )


def sync_milvus_alias(svc: Services, alias: str) -> None:
    """After a drop freed the name in Milvus: point the Milvus alias where the SQL table says."""
    if svc.aliases is None:
        return
    row = svc.aliases.rows(fresh=True).get(alias)
    if row is not None and row.kind == "alias" and row.target != alias:
        _point_milvus_alias(svc, alias, row.target)
