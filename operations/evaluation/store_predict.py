"""The same top-k predictions, answered by a VectorStore instead of numpy.

Loading streams an image feature file into a collection in batches; then
every text feature is searched in the store, in batches, and written in
Chinese-CLIP's prediction format (with scores), so `crosscheck` can compare
it with the exact predictions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from datasets.formats import BadRecord, PathLike, iter_features, write_predictions_jsonl
from operations.domain import IndexSpec
from operations.evaluation.knn import TopK, _iter_chunks
from operations.stores.vector_base import VectorStore


def load_features_into_store(
    store: VectorStore,
    collection: str,
    image_feats: PathLike,
    model_name: str,
    index: IndexSpec | None = None,
    batch_size: int = 1000,
    recreate: bool = False,
    expected_dim: int | None = None,
) -> dict:
    """Upsert every good line of an image feature file into `collection`.

    The collection is created (with `index`, default FLAT) when missing, or
    dropped and re-created when `recreate`. Returns counts and bad records.
    """
    index = index or IndexSpec("FLAT")
    if recreate and store.has_collection(collection):
        store.drop_collection(collection)
    bad: list[BadRecord] = []
    ids: list[int] = []
    rows: list[np.ndarray] = []
    dim = expected_dim
    written = 0
    start = time.perf_counter()

    def flush() -> int:
        return store.upsert(collection, ids, np.stack(rows), visible=False)

    for rec in iter_features(image_feats, "image_id", dim):
        if isinstance(rec, BadRecord):
            bad.append(rec)
            continue
        if dim is None:
            dim = rec.vector.shape[0]
        if rec.vector.shape[0] != dim:
            bad.append(
                BadRecord(rec.line_no, f"feature has dimension {rec.vector.shape[0]}, expected {dim}", rec.id)
            )
            continue
        if written == 0 and not ids:
            store.create_collection(collection, dim, model_name, index)
        ids.append(rec.id)
        rows.append(rec.vector)
        if len(ids) == batch_size:
            written += flush()
            ids, rows = [], []
    if ids:
        written += flush()
    if written:
        store.wait_visible(collection)  # the predictions that follow read every row
    return {
        "collection": collection,
        "upserted": written,
        "dim": dim,
        "bad": len(bad),
        "bad_examples": [repr(b) for b in bad[:5]],
        "seconds": round(time.perf_counter() - start, 3),
    }


def predict_via_store(
    store: VectorStore,
    collection: str,
    query_feats: np.ndarray,
    k: int = 10,
    query_ids: np.ndarray | None = None,
    batch_size: int = 256,
) -> TopK:
    """Top-k of each query row from `store.search`, batched; ids best first.

    A query the store answers with fewer than k hits is padded with id -1 and
    score -inf (the evaluation then rejects it loudly instead of scoring it).
    """
    query_feats = np.asarray(query_feats, dtype=np.float32)
    n = len(query_feats)
    if query_ids is None:
        query_ids = np.arange(n, dtype=np.int64)
    ids = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    for start in range(0, n, batch_size):
        hits = store.search(collection, query_feats[start : start + batch_size], k)
        for row, row_hits in enumerate(hits):
            for col, hit in enumerate(row_hits[:k]):
                ids[start + row, col] = hit.id
                scores[start + row, col] = hit.score
    return TopK(np.asarray(query_ids, np.int64), ids, scores)


def predict_files_via_store(
    store: VectorStore,
    collection: str,
    text_feats: PathLike,
    output: PathLike,
    k: int = 10,
    batch_size: int = 256,
    progress: bool = False,
) -> dict:
    """Text->image predictions file answered by the store (text features streamed).

    A short answer (fewer than k hits) is written short, counted in
    `short_answers`, and the evaluation will refuse it, as it should.
    """
    bad: list[BadRecord] = []
    dim = store.describe(collection).dim
    start = time.perf_counter()
    short = 0

    def rows() -> Iterator[tuple[int, list[int], list[float]]]:
        nonlocal short
        for qids, feats in _iter_chunks(text_feats, "text_id", dim, batch_size, bad):
            for qid, ids, scores in predict_via_store(store, collection, feats, k, qids, batch_size).items():
                if ids and ids[-1] == -1:
                    short += 1
                    keep = [i for i, x in enumerate(ids) if x != -1]
                    ids, scores = [ids[i] for i in keep], [scores[i] for i in keep]
                yield qid, ids, scores

    it = rows()
    if progress:
        from tqdm import tqdm

        it = tqdm(it, unit="query", desc="store top-k")
    n = write_predictions_jsonl(output, it)
    seconds = time.perf_counter() - start
    return {
        "output": str(output),
        "collection": collection,
        "k": k,
        "queries": n,
        "short_answers": short,
        "bad_query_records": len(bad),
        "seconds": round(seconds, 3),
        "queries_per_second": round(n / seconds, 1) if seconds else None,
    }
