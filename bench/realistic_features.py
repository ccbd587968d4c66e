"""Features shaped like Chinese-CLIP embeddings, for index benchmarks.

    python -m bench.realistic_features --stats [--n 100000] [--seed 0]
    python -m bench.realistic_features --out bench/out/feats.npy --n 1000000   # memory-mapped .npy

Uniform random unit vectors (`bench.gen_split`) are the worst case of an ANN index: in 1024
dimensions every point is about as far from every other one, so "nearest" means nothing and
HNSW finds a fifth of the exact top 10. Real CLIP image embeddings are not like that:

- they sit in a narrow cone: unrelated images have cosine ~0.3-0.6 (a large shared mean);
- their intrinsic dimension is low (tens, not 1024): the spectrum of the covariance decays;
- they form clusters of very uneven sizes (product categories, scenes), and dense groups of
  near-duplicates (the same product photographed again, re-encoded, cropped);
- text embeddings of the same model sit apart from the images (the modality gap): a good
  text-image match has cosine ~0.3-0.5, far below image-image neighbours.

This generator makes 1024-d L2-normalised float32 vectors with those properties: a mixture of
`clusters` Gaussian clusters (sizes log-normal, so a few are large and many small) in a
`latent`-d space with a decaying spectrum, mapped to 1024-d by a random orthonormal map, plus a
shared image mean and isotropic noise in all 1024 dimensions. A fraction of the images belong to
near-duplicate groups (a shared point plus tiny noise). Text queries describe an image drawn the
same way (the latent point plus query noise), mapped with a different mean (the text mean).
`bench/README.md` ("Realistic features") shows the statistics and why they are a fair stand-in.

Deterministic by seed, and streamed: rows are made in fixed blocks of `BLOCK`, each from its own
random stream (seed, block number), so any range of rows is the same whatever the caller's chunk
size, and 1M x 1024 (4 GB) is never held unless written to a memory-mapped file (`--out`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 8192  # rows per random stream: the unit of determinism
DIM = 1024

# Variance shares of an image vector before normalisation (they add up to 1): the shared
# image mean, the cluster centre, the spread within a cluster, isotropic 1024-d noise. Tuned
# (see --stats) so that unrelated images have cosine ~0.3-0.6 and neighbours ~0.8-0.9.
IMG_MEAN, IMG_CENTRE, IMG_SPREAD, IMG_NOISE = 0.48, 0.27, 0.20, 0.05
# A text query: its own mean (the modality gap), the latent point of the image it describes
# (centre + spread, scaled), query noise in the latent space and isotropic noise.
TXT_MEAN, TXT_SEMANTIC, TXT_LATENT_NOISE, TXT_NOISE = 0.45, 0.30, 0.10, 0.15
# Cosine between the image mean and the text mean directions.
MEAN_COSINE = 0.15
# Latent standard deviation of dimension i is proportional to i ** -SPECTRUM_DECAY.
SPECTRUM_DECAY = 0.4
# Near-duplicates: spread around their group's point, as a share of a cluster's spread.
DUP_SPREAD = 0.15


@dataclass(frozen=True)
class FeatureModel:
    """The fixed parameters of one synthetic feature space (everything derives from `seed`)."""

    n: int
    seed: int = 0
    dim: int = DIM
    latent: int = 64
    clusters: int = 1000
    dup_fraction: float = 0.05  # images that belong to a near-duplicate group
    dup_group_mean: float = 4.0  # mean images per near-duplicate group
    block: int = BLOCK  # rows per random stream (part of the seed: another block, other rows)
    _p: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.n < 1 or self.latent < 1 or self.latent > self.dim or self.clusters < 1:
            raise ValueError("need n >= 1, 1 <= latent <= dim, clusters >= 1")
        if not 0 <= self.dup_fraction < 1 or self.dup_group_mean < 1:
            raise ValueError("need 0 <= dup_fraction < 1 and dup_group_mean >= 1")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0]))
        p = self._p
        # A random orthonormal map latent -> dim.
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.latent)))
        p["map"] = q.T.astype(np.float32)  # (latent, dim)
        # Decaying spectrum (like the PCA spectrum of real embeddings), unit total variance.
        spectrum = (np.arange(1, self.latent + 1, dtype=np.float64)) ** -SPECTRUM_DECAY
        p["spectrum"] = (spectrum / np.sqrt((spectrum**2).sum())).astype(np.float32)
        img_mean = _unit(rng.standard_normal(self.dim))
        other = _unit(rng.standard_normal(self.dim))
        other = _unit(other - (other @ img_mean) * img_mean)
        p["img_mean"] = img_mean.astype(np.float32)
        p["txt_mean"] = (MEAN_COSINE * img_mean + np.sqrt(1 - MEAN_COSINE**2) * other).astype(np.float32)
        # Cluster sizes: log-normal weights (a few large clusters, a long tail of small ones).
        w = rng.lognormal(0.0, 1.2, self.clusters)
        p["weights"] = w / w.sum()
        p["centres"] = (rng.standard_normal((self.clusters, self.latent)) * p["spectrum"]).astype(np.float32)
        p["spreads"] = rng.uniform(0.6, 1.4, self.clusters).astype(np.float32)
        groups = max(1, int(round(self.n * self.dup_fraction / self.dup_group_mean)))
        g_cluster = rng.choice(self.clusters, groups, p=p["weights"])
        p["dup_cluster"] = g_cluster
        p["dup_latent"] = self._spread(rng, g_cluster)

    # -- building blocks ---------------------------------------------------------------
    def _spread(self, rng: np.random.Generator, cluster: np.ndarray) -> np.ndarray:
        """Latent points of images of these clusters: centre + the cluster's spread (unit total)."""
        p = self._p
        z = np.sqrt(IMG_CENTRE) * p["centres"][cluster]
        eps = rng.standard_normal((len(cluster), self.latent)).astype(np.float32) * p["spectrum"]
        return z + np.sqrt(IMG_SPREAD) * p["spreads"][cluster, None] * eps

    def _to_space(
        self, rng: np.random.Generator, z: np.ndarray, mean: np.ndarray, mean_share: float, noise: float
    ):
        x = np.sqrt(mean_share) * mean + z @ self._p["map"]
        x += np.sqrt(noise / self.dim) * rng.standard_normal((len(z), self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, cluster of each row) of block b (rows b*block ..); the caller must not modify them."""
        p = self._p
        last = self._p.get("last")
        if last is not None and last[0] == b:
            return last[1], last[2].copy()
        rows = min(self.block, self.n - b * self.block)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1, b]))
        cluster = rng.choice(self.clusters, rows, p=p["weights"])
        z = self._spread(rng, cluster)
        noise = np.sqrt(IMG_NOISE / self.dim) * rng.standard_normal((rows, self.dim)).astype(np.float32)
        dup = rng.random(rows) < self.dup_fraction
        if dup.any():
            # A near-duplicate is its group's image (latent point and its own noise) with a
            # little of both changed: the same photo re-encoded, resized or cropped.
            g = rng.integers(0, len(p["dup_latent"]), int(dup.sum()))
            cluster[dup] = p["dup_cluster"][g]
            eps = rng.standard_normal((len(g), self.latent)).astype(np.float32) * p["spectrum"]
            z[dup] = p["dup_latent"][g] + DUP_SPREAD * np.sqrt(IMG_SPREAD) * eps
            noise[dup] = self._dup_noise()[g] + DUP_SPREAD * noise[dup]
        x = np.sqrt(IMG_MEAN) * p["img_mean"] + z @ p["map"] + noise
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        self._p["last"] = (b, x, cluster.copy())  # consecutive small chunks reuse one block
        return x, cluster

    def _dup_noise(self) -> np.ndarray:
        """Each near-duplicate group's own isotropic noise (made once: groups x dim floats)."""
        if "dup_noise" not in self._p:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 4]))
            shape = (len(self._p["dup_latent"]), self.dim)
            self._p["dup_noise"] = np.sqrt(IMG_NOISE / self.dim) * rng.standard_normal(shape, np.float32)
        return self._p["dup_noise"]

    # -- public ------------------------------------------------------------------------
    def rows(self, start: int, stop: int) -> np.ndarray:
        """Image vectors start..stop-1 (float32, L2-normalised): the same whatever the range."""
        start, stop = max(0, start), min(self.n, stop)
        out = []
        bs = self.block
        for b in range(start // bs, (stop - 1) // bs + 1 if stop > start else 0):
            x, _ = self._block(b)
            lo = max(start - b * bs, 0)
            hi = min(stop - b * bs, len(x))
            out.append(x[lo:hi])
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def clusters_of(self, start: int, stop: int) -> np.ndarray:
        """The cluster of each image start..stop-1 (for tests and statistics)."""
        bs = self.block
        c = np.concatenate([self._block(b)[1] for b in range(start // bs, (stop - 1) // bs + 1)])
        return c[start - (start // bs) * bs :][: stop - start]

    def chunks(self, chunk: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) of consecutive chunks covering all n images."""
        for start in range(0, self.n, chunk):
            yield start, self.rows(start, min(self.n, start + chunk))

    def queries(self, count: int, seed_offset: int = 0) -> np.ndarray:
        """Text-like queries: each describes an image drawn like the data (its cluster by weight)."""
        p = self._p
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2, seed_offset]))
        cluster = rng.choice(self.clusters, count, p=p["weights"])
        z = self._spread(rng, cluster)
        z += np.sqrt(TXT_LATENT_NOISE) * rng.standard_normal(z.shape).astype(np.float32) * p["spectrum"]
        # The semantic part of a text is weaker than an image's, relative to its mean.
        z *= np.sqrt(TXT_SEMANTIC / (IMG_CENTRE + IMG_SPREAD + TXT_LATENT_NOISE))
        return self._to_space(rng, z, p["txt_mean"], TXT_MEAN, TXT_NOISE).astype(np.float32)

    def image_queries(self, count: int, seed_offset: int = 0) -> np.ndarray:
        """Image-like queries (search by image): new images drawn like the data."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 3, seed_offset]))
        cluster = rng.choice(self.clusters, count, p=self._p["weights"])
        z = self._spread(rng, cluster)
        return self._to_space(rng, z, self._p["img_mean"], IMG_MEAN, IMG_NOISE).astype(np.float32)

    def write_npy(self, path: Path, chunk: int = 65536) -> np.memmap:
        """All n vectors into a memory-mapped .npy (4 GB at 1M): written block by block."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.n, self.dim))
        for start, x in self.chunks(chunk):
            out[start : start + len(x)] = x
        out.flush()
        del out
        tmp.replace(path)
        return np.load(path, mmap_mode="r")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def cached(n: int, seed: int = 0, out_dir: Path | None = None) -> np.ndarray:
    """The n images of seed `seed`, memory-mapped from bench/out (written once)."""
    out_dir = out_dir or Path(__file__).resolve().parent / "out"
    path = out_dir / f"realistic_n{n}_seed{seed}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    return FeatureModel(n, seed).write_npy(path)


# ------------------------------------------------------------------------------ stats


def _topk_stream(
    probes: np.ndarray, chunks: Iterator[tuple[int, np.ndarray]], k: int, skip: np.ndarray | None = None
) -> np.ndarray:
    """Exact top-k cosines of each probe over streamed rows (`skip`: each probe's own row)."""
    best = np.full((len(probes), k), -np.inf, np.float32)
    for start, x in chunks:
        s = probes @ x.T
        if skip is not None:
            rows = np.nonzero((skip >= start) & (skip < start + len(x)))[0]
            s[rows, skip[rows] - start] = -np.inf
        s = np.concatenate([best, s], axis=1)
        best = -np.sort(-np.partition(s, s.shape[1] - k, axis=1)[:, -k:], axis=1)
    return best


def feature_stats(
    x_sample: np.ndarray,
    nn10: np.ndarray,
    random_cos: np.ndarray,
    text_top: np.ndarray | None = None,
    text_random: np.ndarray | None = None,
    text_mean: np.ndarray | None = None,
) -> dict:
    """The statistics `--stats` prints, from a sample of images and probe results.

    nn10: each probe image's 10 best cosines (itself excluded); random_cos: cosines of random
    pairs; text_top / text_random: each text query's best 10 cosines / cosines to random images.
    """
    q = [5, 25, 50, 75, 95]

    def pct(v: np.ndarray) -> dict:
        return {f"p{p}": round(float(np.percentile(v, p)), 3) for p in q}

    def dist(c: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(0.0, 2 - 2 * c))

    centred = x_sample - x_sample.mean(0)
    ev = np.linalg.eigvalsh(centred.T @ centred / len(centred))[::-1]
    share = np.cumsum(ev) / ev.sum()
    out = {
        "pairwise_cosine": pct(random_cos),
        "nn1_cosine": pct(nn10[:, 0]),
        "nn10_cosine": pct(nn10[:, 9]),
        # Relative contrast: how much nearer the 10th neighbour is than a random point (L2
        # distance on unit vectors). ~1.0 for uniform random vectors: no index can tell them apart.
        "nn10_over_random_distance": round(
            float(np.median(dist(nn10[:, 9])) / np.median(dist(random_cos))), 3
        ),
        "pca_dims_for_90pct_variance": int(np.searchsorted(share, 0.9) + 1),
        "mean_vector_norm": round(float(np.linalg.norm(x_sample.mean(0))), 3),
    }
    if text_top is not None and text_random is not None:
        out["text_image_top1_cosine"] = pct(text_top[:, 0])
        out["text_image_top10_cosine"] = pct(text_top[:, 9])
        out["text_image_random_cosine"] = pct(text_random)
    if text_mean is not None:
        m_img = x_sample.mean(0)
        out["image_mean_vs_text_mean_cosine"] = round(
            float(m_img @ text_mean / np.linalg.norm(m_img) / np.linalg.norm(text_mean)), 3
        )
    return out


def stats_of(
    images: np.ndarray | FeatureModel, texts: np.ndarray | None, probes: int = 300, seed: int = 0
) -> dict:
    """`feature_stats` of a feature matrix (or a generator, streamed) and optional text queries."""
    rng = np.random.default_rng(seed)
    if isinstance(images, FeatureModel):
        n = images.n
        chunks = lambda: images.chunks()  # noqa: E731
        rows = images.rows
    else:
        n = len(images)
        chunks = lambda: ((s, np.asarray(images[s : s + 65536], np.float32)) for s in range(0, n, 65536))  # noqa: E731
        rows = lambda a, b: np.asarray(images[a:b], np.float32)  # noqa: E731
    sample_n = min(n, 20000)
    sample = rows(0, sample_n)  # rows are i.i.d. in order, so the first ones are a fair sample
    a, b = rng.integers(0, sample_n, (2, 20000))
    a, b = a[a != b], b[a != b]
    random_cos = np.concatenate(
        [
            np.einsum("ij,ij->i", sample[a[i : i + 2000]], sample[b[i : i + 2000]])
            for i in range(0, len(a), 2000)
        ]
    )
    # Probes from the sample (rows are i.i.d.): their own row is skipped in the neighbour search.
    probe_rows = np.sort(rng.choice(sample_n, min(probes, sample_n), replace=False))
    probe_x = sample[probe_rows]
    nn10 = _topk_stream(probe_x, chunks(), 10, skip=probe_rows)
    text_top = text_random = text_mean = None
    if texts is not None and len(texts):
        t = np.asarray(texts[:probes], np.float32)
        text_top = _topk_stream(t, chunks(), 10)
        text_random = (t @ sample[rng.integers(0, sample_n, 200)].T).ravel()
        text_mean = np.asarray(texts, np.float32).mean(0)
    return feature_stats(sample, nn10, random_cos, text_top, text_random, text_mean)


def uniform_stats(n: int, seed: int = 0, dim: int = DIM) -> dict:
    """The same statistics for uniform random unit vectors (bench.gen_split's features)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return stats_of(x, None, seed=seed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--stats", action="store_true", help="print the statistics of the generated features")
    ap.add_argument("--uniform", action="store_true", help="with --stats: also uniform random vectors")
    ap.add_argument(
        "--features",
        type=Path,
        help="with --stats: the statistics of a Chinese-CLIP "
        "image feature file (*_imgs.img_feat.jsonl) instead, e.g. the demo model's",
    )
    ap.add_argument("--text-features", type=Path, help="with --features: its text feature file")
    ap.add_argument("--out", type=Path, help="write all n vectors to this .npy (memory-mapped)")
    args = ap.parse_args(argv)
    if args.features:
        from operations.evaluation.knn import load_feature_matrix

        _, x, _ = load_feature_matrix(args.features, "image_id")
        t = load_feature_matrix(args.text_features, "text_id")[1] if args.text_features else None
        print(
            json.dumps(
                {
                    "features": str(args.features),
                    "n": len(x),
                    "dim": x.shape[1],
                    **stats_of(x, t, seed=args.seed),
                },
                indent=1,
            )
        )
        return
    model = FeatureModel(args.n, args.seed, clusters=args.clusters)
    if args.out:
        t0 = time.perf_counter()
        model.write_npy(args.out)
        print(json.dumps({"out": str(args.out), "n": args.n, "seconds": round(time.perf_counter() - t0, 1)}))
    if args.stats:
        t0 = time.perf_counter()
        result = {
            "n": args.n,
            "seed": args.seed,
            "clusters": args.clusters,
            **stats_of(model, model.queries(300), seed=args.seed),
        }
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result, indent=1))
        if args.uniform:
            print(json.dumps({"uniform": True, "n": args.n, **uniform_stats(args.n, args.seed)}, indent=1))


if __name__ == "__main__":
    main()
