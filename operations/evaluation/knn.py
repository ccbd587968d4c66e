"""Exact top-k by inner product, chunked so large sets fit in modest memory.

Queries are processed `query_chunk` at a time against the index in blocks of
`index_chunk` columns; each block's top-k is merged into a running top-k, so
peak memory is about query_chunk x index_chunk floats (32 MB by default)
whatever the sizes. Order: score descending, ties by lower id, so the result
is deterministic and independent of file order or chunk sizes. (cn_clip's
script breaks ties by file order; with real features ties are vanishingly
rare, and our evaluation and cross-check treat tied scores as agreement.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from datasets.formats import BadRecord, FeatureRecord, PathLike, iter_features


@dataclass
class TopK:
    """Row i holds the k best index ids of query i (best first) and their scores.

    When the index has fewer than k items, k is that count.
    """

    query_ids: np.ndarray  # (q,) int64
    ids: np.ndarray  # (q, k) int64
    scores: np.ndarray  # (q, k) float32

    def __len__(self) -> int:
        return len(self.query_ids)

    def items(self) -> Iterator[tuple[int, list[int], list[float]]]:
        """(query_id, ids, scores) per query: ready for `write_predictions_jsonl`."""
        yield from zip(self.query_ids.tolist(), self.ids.tolist(), self.scores.tolist(), strict=True)


def load_feature_matrix(
    path: PathLike, id_key: str, expected_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[BadRecord]]:
    """(ids int64, features float32 (n, dim), bad records) of a feature jsonl.

    The first good line fixes the dimension when `expected_dim` is None. Rows
    are collected in blocks, so the peak is about the final matrix, not a
    list of Python floats.
    """
    ids: list[int] = []
    blocks: list[np.ndarray] = []
    block: list[np.ndarray] = []
    bad: list[BadRecord] = []
    dim = expected_dim
    for rec in iter_features(path, id_key, expected_dim):
        if isinstance(rec, BadRecord):
            bad.append(rec)
            continue
        if dim is None:
            dim = rec.vector.shape[0]
        elif rec.vector.shape[0] != dim:
            bad.append(
                BadRecord(rec.line_no, f"feature has dimension {rec.vector.shape[0]}, expected {dim}", rec.id)
            )
            continue
        ids.append(rec.id)
        block.append(rec.vector)
        if len(block) == 4096:
            blocks.append(np.stack(block))
            block = []
    if block:
        blocks.append(np.stack(block))
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, dim or 0), np.float32)
    return np.asarray(ids, dtype=np.int64), matrix, bad


def _block_topk(scores: torch.Tensor, col_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of `scores` (ties: lower id), columns sorted by id ascending."""
    n = scores.shape[1]
    k = min(k, n)
    # torch.topk is an order of magnitude faster than numpy's argpartition.
    # Take one extra: when the (k+1)-th score equals the k-th, topk may have
    # chosen arbitrarily among tied columns at the cut, so that row is redone
    # with a stable sort (columns are in id order: stable = lower id first).
    # Otherwise the top-k set is unique and only its order needs fixing below.
    vals, cand = torch.topk(scores, min(k + 1, n), dim=1)
    if k < n:
        rows = torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten().tolist()
        vals, cand = vals[:, :k].clone(), cand[:, :k].clone()
        for r in rows:
            cand[r] = torch.sort(scores[r], descending=True, stable=True).indices[:k]
            vals[r] = scores[r, cand[r]]
    cand_scores = vals.numpy()
    cand_ids = col_ids[cand.numpy()]
    order = np.lexsort((cand_ids, -cand_scores), axis=-1)
    return np.take_along_axis(cand_ids, order, axis=1), np.take_along_axis(cand_scores, order, axis=1)


def _merge(a_ids, a_scores, b_ids, b_scores, k):
    ids = np.concatenate([a_ids, b_ids], axis=1)
    scores = np.concatenate([a_scores, b_scores], axis=1)
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def exact_topk(
    queries: np.ndarray,
    index: np.ndarray,
    index_ids: np.ndarray,
    k: int,
    query_ids: np.ndarray | None = None,
    query_chunk: int = 1024,
    index_chunk: int = 8192,
    progress: bool = False,
) -> TopK:
    """Exact top-k of every query row against every index row, by inner product.

    Scores are float32 matrix products (the features are L2-normalised, so
    inner product = cosine) by numpy; the top-k selection by torch.topk.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index = np.asarray(index, dtype=np.float32)
    index_ids = np.asarray(index_ids, dtype=np.int64)
    if query_ids is None:
        query_ids = np.arange(len(queries), dtype=np.int64)
    if queries.ndim != 2 or index.ndim != 2 or queries.shape[1] != index.shape[1]:
        raise ValueError(f"shape mismatch: queries {queries.shape}, index {index.shape}")
    if len(index_ids) != len(index):
        raise ValueError("index_ids and index differ in length")
    if len(np.unique(index_ids)) != len(index_ids):
        raise ValueError("index ids are not unique")
    k = min(k, len(index))
    # Sort columns by id once: then every block's columns are in id order.
    order = np.argsort(index_ids, kind="stable")
    index_ids = index_ids[order]
    index = np.ascontiguousarray(index[order])
    nq = len(queries)
    out_ids = np.empty((nq, k), np.int64)
    out_scores = np.empty((nq, k), np.float32)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=nq, unit="query", desc="top-k")
    for q0 in range(0, nq, query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_ids = np.empty((len(q), 0), np.int64)
        best_scores = np.empty((len(q), 0), np.float32)
        for c0 in range(0, len(index), index_chunk):
            # numpy (BLAS) for the product: as fast as torch on big blocks, and
            # torch pays milliseconds of thread-pool overhead on small ones.
            s = torch.from_numpy(q @ index[c0 : c0 + index_chunk].T)
            b_ids, b_scores = _block_topk(s, index_ids[c0 : c0 + index_chunk], k)
            best_ids, best_scores = _merge(best_ids, best_scores, b_ids, b_scores, k)
        out_ids[q0 : q0 + len(q)] = best_ids
        out_scores[q0 : q0 + len(q)] = best_scores
        if bar is not None:
            bar.update(len(q))
    if bar is not None:
        bar.close()
    return TopK(np.asarray(query_ids, np.int64), out_ids, out_scores)


def _iter_chunks(
    path: PathLike, id_key: str, dim: int, chunk: int, bad: list[BadRecord]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    ids: list[int] = []
    rows: list[np.ndarray] = []
    for rec in iter_features(path, id_key, dim):
        if isinstance(rec, BadRecord):
            bad.append(rec)
            continue
        assert isinstance(rec, FeatureRecord)
        ids.append(rec.id)
        rows.append(rec.vector)
        if len(rows) == chunk:
            yield np.asarray(ids, np.int64), np.stack(rows)
            ids, rows = [], []
    if rows:
        yield np.asarray(ids, np.int64), np.stack(rows)


def predict_files(
    image_feats: PathLike,
    text_feats: PathLike,
    output: PathLike,
    k: int = 10,
    direction: str = "t2i",
    query_chunk: int = 1024,
    index_chunk: int = 8192,
    with_scores: bool = True,
    progress: bool = False,
) -> dict:
    """Exact top-k predictions file from two feature files, like cn_clip's make_topk_predictions.

    direction "t2i": for each text, the k best images (`{"text_id", "image_ids"}`);
    "i2t": for each image, the k best texts (`{"image_id", "text_ids"}`, as
    cn_clip's make_topk_predictions_tr.py). The index side is loaded whole;
    the query side is streamed in chunks and written as it goes.
    Returns a summary with counts and bad records.
    """
    if direction == "t2i":
        index_path, index_key, query_path, query_key, result_key = (
            image_feats,
            "image_id",
            text_feats,
            "text_id",
            "image_ids",
        )
    elif direction == "i2t":
        index_path, index_key, query_path, query_key, result_key = (
            text_feats,
            "text_id",
            image_feats,
            "image_id",
            "text_ids",
        )
    else:
        raise ValueError("direction must be 't2i' or 'i2t'")
    index_ids, index, bad_index = load_feature_matrix(index_path, index_key)
    if len(index_ids) == 0:
        raise ValueError(f"no usable features in {index_path}")
    # Duplicate ids on the index side would make a prediction list repeat an id.
    uniq, first = np.unique(index_ids, return_index=True)
    if len(uniq) != len(index_ids):
        keep = np.sort(first)
        dup_mask = np.ones(len(index_ids), bool)
        dup_mask[keep] = False
        bad_index += [
            BadRecord(0, f"duplicate {index_key} {int(i)} ignored", int(i)) for i in index_ids[dup_mask]
        ]
        index_ids, index = index_ids[keep], index[keep]
    bad_query: list[BadRecord] = []
    from datasets.formats import write_predictions_jsonl

    def rows() -> Iterator[tuple[int, list[int], list[float]]]:
        for qids, qfeats in _iter_chunks(query_path, query_key, index.shape[1], query_chunk, bad_query):
            yield from exact_topk(qfeats, index, index_ids, k, qids, query_chunk, index_chunk).items()

    if progress:
        from tqdm import tqdm

        it = tqdm(rows(), unit="query", desc="top-k")
    else:
        it = rows()
    n = write_predictions_jsonl(output, it, query_key, result_key, with_scores=with_scores)
    return {
        "output": str(output),
        "direction": direction,
        "k": min(k, len(index_ids)),
        "queries": n,
        "index_size": len(index_ids),
        "bad_index_records": len(bad_index),
        "bad_query_records": len(bad_query),
        "bad_examples": [b.__repr__() for b in (bad_index + bad_query)[:5]],
    }
