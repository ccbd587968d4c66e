"""A load's vectors through the Milvus server's own import of files (`load --bulk-import`).

Instead of streaming upserts, the vectors go into row-based JSON files (the one format the
2.3 server imports for our schema: its numpy import has no ARRAY fields, and `tags` is one;
bench/README.md, "Bulk import"), and the server imports each file as one task. The SQL rows
are written exactly as in a streaming load (operations/load.py); what differs is when a row is
marked indexed: once its file's task has completed *and* every id of the file is visible to a
Strong query (a completed task's segments reach the query nodes some seconds later).

Order per file: rows written to `<dir>/<collection>/<run>-<n>.json` -> the file closed and its
ids written beside it (`.ids.npy`) -> the task started -> completed and the row count checked
-> every id visible -> the SQL rows marked indexed -> both files deleted. The server does not
deduplicate ids on import, so a re-run must never import an id that is already there:

- `recover` (before the pipeline) settles each file a killed run left: a task still running is
  waited for; a completed one's rows are marked; a failed one's, or a file never submitted, is
  deleted (its rows stay unindexed and this run imports them again). A file whose task the
  server no longer knows (it keeps them a day) is checked id by id.
- When the collection already holds vectors (a killed streaming load's unmarked rows, earlier
  loads), each batch's ids are looked up at Strong first; those present are upserted as a
  streaming load would (an upsert replaces, never duplicates), the rest go to the files.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from operations.context import Services
from operations.domain import VectorAttrs, check_written_model
from operations.errors import DependencyUnavailable, InvalidInput
from operations.progress import Progress
from operations.stores.milvus_store import MAX_TAGS, ImportTask, MilvusVectorStore

log = logging.getLogger(__name__)

# Rows per import file (one server task): ~256 MB of JSON at 1024-d (~13 KB a row). Small
# enough that several files are in flight while the next is written (each file's rows become
# visible ~15 s after its task ends: one big file leaves nothing to overlap that with; measured
# in bench/README.md, "Bulk import"), and far from the 2.3 server's importTaskExpiration (a
# task running longer than 900 s is killed).
ROWS_PER_FILE = 20_000
# Files submitted and not yet settled (task running, or rows not yet visible: that takes
# ~15 s whatever the file's size, so several overlap with writing the next ones). Beyond this
# the writer waits for the oldest, so the files on disk stay bounded (this many plus one).
MAX_PENDING_TASKS = 4
TASK_TIMEOUT_S = 960.0  # the server's own expiration plus a minute
VISIBLE_TIMEOUT_S = 300.0  # a completed task's rows usually show within ~15 s
POLL_S = 0.5
_SAMPLE = 32  # ids probed while waiting for a file's rows to become visible
_CHECK_CHUNK = 10_000  # ids per Strong lookup (a query returns at most 16,384 rows)


class _TaskFailed(Exception):
    """An import task ended failed (the server cleaned its rows up)."""


def import_dir(configured: str) -> Path:
    """MILVUS_IMPORT_DIR, or a folder in the system temp dir (a server on this machine)."""
    return Path(configured or Path(tempfile.gettempdir()) / "imgsearch-milvus-import").resolve()


@dataclass
class _Pending:
    """A submitted file, from its task's start until its rows are marked."""

    path: Path
    ids: np.ndarray
    task_id: int
    submitted: float
    completed: float | None = None  # when its task was seen completed (rows checked)
    probe: list[int] | None = None  # ids still to see at Strong: a sample first, then the rest
    full: bool = False  # `probe` covers every id of the file


class BulkImporter:
    """Files, tasks and marking for one bulk load of one collection (see the module docstring).

    `add` runs on the load's one vector thread; `finish` after the pipeline; `close` always."""

    def __init__(
        self,
        svc: Services,
        collection: str,
        progress: Progress,
        on_indexed: Callable[[int], None],
        rows_per_file: int = ROWS_PER_FILE,
    ) -> None:
        # Under the alias-resolving wrapper (operations.aliases) the Milvus store itself: the
        # load passes the collection's resolved name, and the import calls are this store's own.
        store = getattr(svc.vectors, "inner", svc.vectors)
        if not isinstance(store, MilvusVectorStore) or store.is_lite:
            raise InvalidInput(
                "bulk import needs a Milvus server: Milvus Lite has no import of files; "
                "load without --bulk-import"
            )
        self.store, self.svc, self.collection = store, svc, collection
        self.progress, self.on_indexed = progress, on_indexed
        self.rows_per_file = max(1, rows_per_file)
        self.dir = import_dir(svc.settings.milvus_import_dir) / collection
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run = uuid.uuid4().hex[:12]
        self._seq = 0
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._ids: list[int] = []
        self._pending: deque[_Pending] = deque()
        self._next_poll = 0.0
        self._queued: set[int] = set()  # ids in this run's files: a split that repeats one imports it once
        self.files = 0  # import files (tasks) of this run, imported and marked
        self.recovered = 0  # files a killed run left, whose rows this run marked
        self.upserted = 0  # rows already in the collection, upserted instead of imported
        self.waited = {"task_s": 0.0, "visible_s": 0.0}  # the vector stage blocked on the server
        # Nothing can be in the collection unmarked if it holds no vector at all.
        self.check_existing = True
        # The model the load's vectors were encoded with and the making of the collection it
        # began on (set once the load has made the collection): checked before every write, as
        # another process may drop the collection and make it again.
        self.model: str | None = None
        self.incarnation: int | None = None

    # --- before the pipeline ------------------------------------------------------------
    def recover(self) -> None:
        """Settle the files a killed bulk load of this collection left (module docstring)."""
        leftovers = sorted(self.dir.glob("*.json"))
        if leftovers:
            tasks: dict[str, ImportTask] = {}
            for task in self.store.import_tasks(self.collection):
                for f in task.files:
                    if f not in tasks or task.task_id > tasks[f].task_id:
                        tasks[f] = task
            for path in leftovers:
                self._recover_file(path, tasks.get(str(path)))
        self.check_existing = self.store.count(self.collection) > 0

    def _recover_file(self, path: Path, task: ImportTask | None) -> None:
        ids_path = path.with_suffix(".ids.npy")
        if not ids_path.is_file():  # never submitted: its rows are imported again
            log.info("bulk import: %s was never imported; removed", path.name)
            path.unlink(missing_ok=True)
            return
        ids = np.load(ids_path)
        if task is None:
            # Either its start never reached the server, or the server has forgotten the task.
            present = self._present(ids.tolist())
            log.info("bulk import: %s has no task on the server; %d rows are there", path.name, len(present))
            self._mark(sorted(present), count=False)
        else:
            pending = _Pending(path, ids, task.task_id, time.monotonic())
            try:
                self._settle(pending, wait=True, count=False)
                return
            except _TaskFailed as exc:
                log.info("bulk import: %s", exc)
        self._delete(path)

    # --- the pipeline's vector stage ----------------------------------------------------
    def add(self, ids: Sequence[int], vectors: np.ndarray, attrs: Sequence[VectorAttrs]) -> None:
        """Queue one batch's vectors for import (or upsert the ids the collection already holds)."""
        keep = np.ones(len(ids), dtype=bool)
        if self.check_existing:
            present = self._present(list(ids))
            if present:
                keep = np.array([i not in present for i in ids], dtype=bool)
                sel = ~keep
                up_ids = [i for i, k in zip(ids, keep, strict=True) if not k]
                up_attrs = [a for a, k in zip(attrs, keep, strict=True) if not k]
                self.store.upsert(
                    self.collection,
                    up_ids,
                    vectors[sel],
                    up_attrs,
                    visible=False,
                    model=self.model,
                    incarnation=self.incarnation,
                )
                self._mark(up_ids)
                self.upserted += len(up_ids)
        rows = []
        for i, (image_id, k) in enumerate(zip(ids, keep, strict=True)):
            if not k:
                continue
            if image_id in self._queued:
                self.progress.fail(f"image {image_id}", "appears twice in the split; imported once")
                continue
            a = attrs[i]
            rows.append(
                {
                    "id": int(image_id),
                    "vector": vectors[i],
                    "source": a.source,
                    "tags": list(a.tags)[:MAX_TAGS],
                    "created_at": int(a.created_at),
                }
            )
            self._queued.add(int(image_id))
        if rows:
            self._write(rows)
        if len(self._ids) >= self.rows_per_file:
            self._submit()
        self._reap(block=len(self._pending) >= MAX_PENDING_TASKS)

    def _write(self, rows: list[dict]) -> None:
        if self._file is None:
            self._seq += 1
            self._path = self.dir / f"{self._run}-{self._seq:05d}.json"
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed in _submit / close
            self._file.write(b'{"rows":[')
        else:
            self._file.write(b",")
        # orjson writes float32 in their shortest exact form: the server reads back the same vectors.
        self._file.write(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1])
        self._ids.extend(r["id"] for r in rows)

    def _submit(self) -> None:
        if self._file is None or self._path is None:
            return
        self._file.write(b"]}")
        self._file.close()
        self._file = None
        path, ids = self._path, np.asarray(self._ids, dtype=np.int64)
        self._ids = []
        np.save(path.with_suffix(".ids.npy"), ids)  # from here on, recover() looks for its task
        check_written_model(
            self.store.describe_meta(self.collection, fresh=True), self.model, self.incarnation
        )
        task_id = self.store.start_import(self.collection, str(path))
        log.info("bulk import: task %d for %s (%d rows)", task_id, path.name, len(ids))
        self._pending.append(_Pending(path, ids, task_id, time.monotonic()))

    def _reap(self, block: bool) -> None:
        """Settle files in order while they are ready; with `block`, wait for the oldest one.
        Without it, the server is asked at most once per POLL_S (a Strong lookup waits for a
        time tick, and this runs once per batch)."""
        if not block and time.monotonic() < self._next_poll:
            return
        while self._pending:
            try:
                settled = self._settle(self._pending[0], wait=block)
            except _TaskFailed as exc:
                raise DependencyUnavailable("milvus", str(exc)) from None
            if not settled:
                break
            self._pending.popleft()
            block = False
        self._next_poll = time.monotonic() + POLL_S

    # --- after the pipeline -------------------------------------------------------------
    def finish(self) -> None:
        """Import what is still in the open file and wait until every task is settled."""
        if self._ids:
            self._submit()
        while self._pending:
            self._reap(block=True)

    def close(self) -> None:
        """Close an unfinished file (a failed or cancelled load); a re-run's recover() removes it."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    # --- helpers ------------------------------------------------------------------------
    def _settle(self, p: _Pending, wait: bool, count: bool = True) -> bool:
        """Move one file on: its task completed (row count checked) -> every id visible at
        Strong -> rows marked, files deleted. True once done; with `wait`, waits for that
        (else False when it is not there yet). Raises _TaskFailed for a failed task."""
        t0 = time.monotonic()
        try:
            if p.completed is None and not self._task_completed(p, wait):
                return False
        finally:
            self.waited["task_s"] += time.monotonic() - t0 if wait else 0.0
        t0 = time.monotonic()
        try:
            if not self._rows_visible(p, wait):
                return False
        finally:
            self.waited["visible_s"] += time.monotonic() - t0 if wait else 0.0
        self._mark(p.ids.tolist(), count)
        if count:
            self.files += 1
        else:
            self.recovered += 1
        self._delete(p.path)
        return True

    def _task_completed(self, p: _Pending, wait: bool) -> bool:
        while True:
            task = self.store.import_state(p.task_id)
            if task.done:
                break
            if time.monotonic() - p.submitted > TASK_TIMEOUT_S:
                raise DependencyUnavailable(
                    "milvus",
                    f"bulk import task {p.task_id} ({p.path.name}) is still {task.state} "
                    f"after {TASK_TIMEOUT_S:.0f} s; run the load again to wait for it",
                )
            if not wait:
                return False
            time.sleep(POLL_S)
        if task.state != "completed":
            raise _TaskFailed(self._failure(p, task))
        if task.rows != len(p.ids):
            raise DependencyUnavailable(
                "milvus",
                f"bulk import task {task.task_id} ({p.path.name}) imported {task.rows} rows; "
                f"the file holds {len(p.ids)}",
            )
        p.completed = time.monotonic()
        # A sample first (cheap, and what a not-yet-visible file is polled with), then every
        # id: a task's rows reach the query nodes with its segments, some seconds after it ends.
        ids = p.ids.tolist()
        picked = np.random.default_rng(task.task_id).choice(ids, size=min(_SAMPLE, len(ids)), replace=False)
        p.probe = sorted({ids[0], ids[-1], *picked.tolist()})
        p.full = len(p.probe) == len(ids)
        return True

    def _rows_visible(self, p: _Pending, wait: bool) -> bool:
        assert p.completed is not None and p.probe is not None
        while True:
            missing = sorted(set(p.probe) - self._present(p.probe))
            if not missing:
                if p.full:
                    return True
                p.probe, p.full = p.ids.tolist(), True
                continue
            if p.full:
                p.probe = missing
            if time.monotonic() - p.completed > VISIBLE_TIMEOUT_S:
                raise DependencyUnavailable(
                    "milvus",
                    f"bulk import task {p.task_id} completed, but {len(missing)} of its rows are not "
                    f"visible after {VISIBLE_TIMEOUT_S:.0f} s (e.g. id {missing[0]}); run the load again",
                )
            if not wait:
                return False
            time.sleep(POLL_S)

    def _present(self, ids: Sequence[int]) -> set[int]:
        """The ids the collection holds, read at Strong: one store call (one deadline) and one
        query per `_CHECK_CHUNK` ids (each Strong query waits for a time tick)."""
        found: set[int] = set()
        for start in range(0, len(ids), _CHECK_CHUNK):
            found |= self.store.strong_existing_ids(
                self.collection, ids[start : start + _CHECK_CHUNK], chunk=_CHECK_CHUNK
            )
        return found

    def _mark(self, ids: Sequence[int], count: bool = True) -> None:
        """Mark rows indexed; `count`: they were indexed by this run (a recovered file's rows
        are counted by the pipeline instead, as already loaded)."""
        for start in range(0, len(ids), 10_000):
            self.svc.images.mark_indexed(self.collection, list(ids[start : start + 10_000]))
        if ids and count:
            self.on_indexed(len(ids))

    @staticmethod
    def _failure(pending: _Pending, task: ImportTask) -> str:
        text = (
            f"bulk import task {task.task_id} ({pending.path}) failed: {task.reason or task.state}; "
            "its rows stay unindexed and a re-run imports them again"
        )
        if "no such file" in task.reason:
            text += (
                "; the Milvus server reads the file itself: MILVUS_IMPORT_DIR must be a directory it "
                "can read at the same absolute path"
            )
        return text

    @staticmethod
    def _delete(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".ids.npy").unlink(missing_ok=True)
