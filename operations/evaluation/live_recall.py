"""The recall a live collection reaches on its own data.

A sample of the collection's own vectors is searched through the vector store (the index and
search parameters the collection was created with, as the service searches), and compared with
the exact top k of the same vectors over every vector of the collection (`knn.exact_topk`, block
by block, merged): recall@k is the share of the exact top k the store returned, each query's
own id left out of both lists; `crosscheck` adds its tie-aware agreement. Every vector is read
once, `block` ids at a time: about N x dim x 4 bytes (4 GB at 1M x 1024-d) pass through, never
more than a block and the sample at once. The ids
come from the SQL image store (every image the service added or loaded has its row there).
"""

from __future__ import annotations

import numpy as np

from operations.domain import SearchFilter
from operations.evaluation.crosscheck import crosscheck
from operations.evaluation.knn import _merge, exact_topk
from operations.stores.image_base import ImageStore
from operations.stores.vector_base import VectorStore

MAX_IDS = 100_000_000


def live_recall(
    vectors: VectorStore,
    images: ImageStore,
    collection: str,
    sample: int = 200,
    seed: int = 0,
    block: int = 1000,
) -> dict:
    """{"recall@10": mean overlap of the store's top 10 with the exact top 10, ...} (see module)."""
    vectors.describe_meta(collection)  # 404 before any work when it does not exist
    ids = np.asarray(images.ids_matching(collection, SearchFilter(), MAX_IDS), np.int64)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(ids, min(sample, len(ids)), replace=False)) if len(ids) else ids
    found = vectors.get_vectors(collection, picked.tolist())
    q_ids = np.asarray([i for i in picked.tolist() if i in found], np.int64)
    if not len(q_ids):
        return {"collection": collection, "queries": 0, "recall@10": None, "vectors": 0}
    queries = np.stack([found[int(i)] for i in q_ids]).astype(np.float32)
    top_k = 10
    k = top_k + 1  # each query finds itself: asked for one more, then left out
    best_ids = np.empty((len(q_ids), 0), np.int64)
    best_scores = np.empty((len(q_ids), 0), np.float32)
    seen = 0
    for start in range(0, len(ids), block):
        got = vectors.get_vectors(collection, ids[start : start + block].tolist())
        if not got:
            continue
        b_ids = np.fromiter(got.keys(), np.int64, len(got))
        b_vecs = np.stack(list(got.values())).astype(np.float32)
        seen += len(b_ids)
        top = exact_topk(queries, b_vecs, b_ids, k, query_ids=q_ids)
        best_ids, best_scores = _merge(best_ids, best_scores, top.ids, top.scores, k)
    hits = vectors.search(collection, queries, k)
    exact: dict[int, tuple[list[int], list[float]]] = {}
    store: dict[int, tuple[list[int], list[float]]] = {}
    for row, qid in enumerate(q_ids.tolist()):
        e = [(int(i), float(s)) for i, s in zip(best_ids[row], best_scores[row], strict=True) if i != qid]
        h = [(x.id, x.score) for x in hits[row] if x.id != qid]
        exact[qid] = ([i for i, _ in e[:top_k]], [s for _, s in e[:top_k]])
        store[qid] = ([i for i, _ in h[:top_k]], [s for _, s in h[:top_k]])
    result = crosscheck(exact, store, max_examples=3)

    # Recall counts what the store failed to return as missed (crosscheck's overlap@k would
    # compare only as many as the shorter list holds, and a coarse index may return fewer).
    def recall(k: int) -> float:
        return sum(len(set(exact[q][0][:k]) & set(store[q][0][:k])) / k for q in exact) / len(exact)

    info = vectors.describe_meta(collection)
    return {
        "collection": collection,
        "index_type": info.index.type,
        "index_params": info.index.build_params,
        "search_params": info.index.search_params,
        "vectors": seen,
        "queries": result["queries"],
        "recall@10": recall(10),
        "recall@1": recall(1),
        "recall@5": recall(5),
        "tie_aware_agreement": result["tie_aware_agreement"],
        "examples": result["examples"],
    }
