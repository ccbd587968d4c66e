"""Exact top-10 predictions: 5,000 texts x 30,000 images x 1024-d (RN50 / ViT-H size).

Random L2-normalised float32 features; times `exact_topk` (chunked matrix
products + exact tie-aware top-k), median of --runs. A brute-force check on a
sample of queries guards the result.

    python -m bench.bench_knn [--texts 5000] [--images 30000] [--dim 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np

from operations.evaluation.knn import exact_topk


def normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    m = rng.standard_normal((n, d), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=5000)
    ap.add_argument("--images", type=int, default=30000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--query-chunk", type=int, default=1024)
    ap.add_argument("--index-chunk", type=int, default=8192)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    images, texts = normalised(rng, args.images, args.dim), normalised(rng, args.texts, args.dim)
    image_ids = rng.permutation(args.images * 3)[: args.images].astype(np.int64)
    print(
        f"{args.texts} texts x {args.images} images x {args.dim}-d, top-{args.k}, "
        f"chunks {args.query_chunk} x {args.index_chunk}"
    )
    times = []
    for run in range(args.runs):
        t = time.perf_counter()
        result = exact_topk(
            texts, images, image_ids, args.k, query_chunk=args.query_chunk, index_chunk=args.index_chunk
        )
        times.append(time.perf_counter() - t)
        print(f"run {run + 1}: {times[-1]:.2f} s", flush=True)
    # The floor: the same chunked matrix products with no top-k at all.
    floor = []
    for _ in range(args.runs):
        t = time.perf_counter()
        for q0 in range(0, args.texts, args.query_chunk):
            for c0 in range(0, args.images, args.index_chunk):
                texts[q0 : q0 + args.query_chunk] @ images[c0 : c0 + args.index_chunk].T
        floor.append(time.perf_counter() - t)
    print(f"matrix products alone (median): {statistics.median(floor):.2f} s")
    sample = rng.choice(args.texts, 20, replace=False)
    scores = texts[sample] @ images.T
    for row, q in zip(scores, sample):
        want = image_ids[np.lexsort((image_ids, -row))[: args.k]]
        assert result.ids[q].tolist() == want.tolist(), f"mismatch at query {q}"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"median {statistics.median(times):.2f} s  ({args.texts / statistics.median(times):.0f} queries/s; "
        f"peak RSS {peak_mb:.0f} MB incl. the {images.nbytes / 2**20:.0f} MB image matrix)"
    )


if __name__ == "__main__":
    main()
