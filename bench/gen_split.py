"""Generate (and cache) a benchmark split in Chinese-CLIP's format.

    python -m bench.gen_split [--n 31783] [--seed 0] [--quick] [--force]

Writes ``bench/out/split_n{N}_seed{S}/bench_imgs.tsv`` (``id<TAB>base64``) and
``bench_imgs.img_feat.jsonl`` (1024-d L2-normalised float32 features, the
RN50 / ViT-H dim) with the writers of ``datasets.formats``, plus ``meta.json``
(written last: its presence marks a complete split, so a killed run is redone).

Images are realistic in size: 300-500 px textures (a colour gradient, smooth
multi-octave noise and a per-image amount of fine noise) saved as JPEG, the
fine-noise amplitude bisected per image towards a target size drawn uniformly
from 24-76 KB, so the JPEGs land in 20-80 KB like Flickr30k's photos. Making
31,783 of them from scratch would take minutes, so a pool of a few hundred
distinct base JPEGs is made once and each image of the split is a base JPEG
with a COM (comment) segment carrying its id inserted after the SOI marker:
a valid JPEG that decodes to the base's pixels but whose bytes, and so whose
sha256, are unique (the image store dedupes by sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.formats import FeatureWriter, write_image_tsv

REPO = Path(__file__).resolve().parent.parent

OUT = REPO / "bench" / "out"
SPLIT = "bench"
DIM = 1024
FLICKR30K_CN_TEST = 31_783  # Flickr30k-CN image count (the whole image set)
KB = 1024
MIN_KB, MAX_KB = 20, 80
QUICK_N, QUICK_POOL = 1000, 64  # --quick everywhere: small, and fast to make on a fresh checkout


# ----------------------------------------------------------------------------- images


def _texture(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(smooth base, fine noise), float32 HxWx3: base + s * noise is one image."""
    gx = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    c0, c1, c2 = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    img = c0 + (c1 - c0) * gx + (c2 - c0) * gy * 0.5
    for octave in range(int(rng.integers(3, 6))):
        cells = 2 ** (octave + 2)
        small = (rng.standard_normal((cells, cells, 3)) * 40 + 128).clip(0, 255).astype(np.uint8)
        big = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32) - 128
        img = img + big * (0.8**octave)
    noise = rng.standard_normal((height, width, 3)).astype(np.float32)
    return img, noise


def _encode(pixels: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_base_jpeg(seed: int) -> bytes:
    """One base JPEG of 300-500 px, 20-80 KB (target size uniform in 24-76 KB)."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(300, 501, 2))
    quality = int(rng.integers(80, 93))
    target = rng.uniform(24, 76) * KB
    base, noise = _texture(rng, width, height)
    return fit_jpeg_size(base, noise, quality, target, (MIN_KB * KB, MAX_KB * KB - 256), 0.06)


def fit_jpeg_size(
    base: np.ndarray,
    noise: np.ndarray,
    quality: int,
    target: float,
    size_range: tuple[int, int],
    tolerance: float,
) -> bytes:
    """`base + s * noise` as a JPEG whose size is within `tolerance` of `target` and inside
    `size_range` (bytes), or the closest of 14 bisection steps: the size grows with s."""
    lo, hi = 0.0, 48.0
    best = _encode(base, quality)
    for _ in range(14):
        if abs(len(best) - target) < tolerance * target and size_range[0] <= len(best) <= size_range[1]:
            break
        mid = (lo + hi) / 2
        best = _encode(base + mid * noise, quality)
        if len(best) < target:
            lo = mid
        else:
            hi = mid
    return best


def base_pool(count: int, seed: int) -> list[bytes]:
    """`count` distinct base JPEGs, cached in bench/out (two processes make them)."""
    path = OUT / f"pool_c{count}_seed{seed}.bin"
    if path.is_file():
        data = path.read_bytes()
        pool, pos = [], 0
        while pos < len(data):
            (n,) = struct.unpack_from("<I", data, pos)
            pool.append(data[pos + 4 : pos + 4 + n])
            pos += 4 + n
        if len(pool) == count:
            return pool
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as ex:
        pool = list(ex.map(make_base_jpeg, [seed * 1_000_003 + i for i in range(count)], chunksize=8))
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(struct.pack("<I", len(b)) + b for b in pool))
    tmp.replace(path)
    return pool


def unique_jpeg(base: bytes, tag: str) -> bytes:
    """`base` with a COM segment holding `tag` right after SOI: same pixels, unique bytes."""
    if base[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    payload = tag.encode("ascii")
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + base[2:]


def fresh_jpegs(count: int, tag: str, seed: int = 0, pool_size: int = 300) -> list[bytes]:
    """`count` JPEGs with unique bytes (tag them differently in each run: e.g. a uuid)."""
    pool = base_pool(pool_size, seed)
    return [unique_jpeg(pool[i % len(pool)], f"{tag}-{i}") for i in range(count)]


# ----------------------------------------------------------------------------- split


@dataclass(frozen=True)
class SplitInfo:
    dataset_dir: Path
    split: str
    n: int
    first_id: int
    meta: dict

    @property
    def ids(self) -> range:
        return range(self.first_id, self.first_id + self.n)


def split_dir(n: int, seed: int, pool_size: int = 300) -> Path:
    return OUT / (f"split_n{n}_seed{seed}" + ("" if pool_size == 300 else f"_pool{pool_size}"))


def size_summary(sizes: list[int]) -> dict:
    kb = np.asarray(sizes, dtype=np.float64) / KB
    return {
        "count": len(sizes),
        "min_kb": round(float(kb.min()), 1),
        "p10_kb": round(float(np.percentile(kb, 10)), 1),
        "median_kb": round(float(np.median(kb)), 1),
        "p90_kb": round(float(np.percentile(kb, 90)), 1),
        "max_kb": round(float(kb.max()), 1),
        "mean_kb": round(float(kb.mean()), 1),
        "in_20_80_kb": round(float(((kb >= MIN_KB) & (kb <= MAX_KB)).mean()), 4),
        "histogram_10kb": {
            f"{lo}-{lo + 10}": int(((kb >= lo) & (kb < lo + 10)).sum()) for lo in range(0, 100, 10)
        },
    }


def ensure_split(
    n: int = FLICKR30K_CN_TEST,
    seed: int = 0,
    pool_size: int = 300,
    force: bool = False,
    first_id: int = 1_000_000,
    log=print,
) -> SplitInfo:
    """The cached split of `n` images for `seed`, generated if missing."""
    d = split_dir(n, seed, pool_size)
    meta_path = d / "meta.json"
    if meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        return SplitInfo(d, SPLIT, n, meta["first_id"], meta)
    t0 = time.perf_counter()
    d.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    pool = base_pool(pool_size, seed)
    t_pool = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(pool), n)
    ids = list(range(first_id, first_id + n))
    sizes: list[int] = []
    digests: set[bytes] = set()

    def images():
        for k, image_id in enumerate(ids):
            data = unique_jpeg(pool[choice[k]], f"bench n={n} seed={seed} id={image_id}")
            sizes.append(len(data))
            digests.add(hashlib.sha256(data).digest())
            yield image_id, data

    write_image_tsv(d / f"{SPLIT}_imgs.tsv", images())
    # Features in chunks: 1024-d float32 normal rows, L2-normalised in float32.
    with FeatureWriter(d / f"{SPLIT}_imgs.img_feat.jsonl", "image_id") as w:
        for start in range(0, n, 4096):
            m = rng.standard_normal((min(4096, n - start), DIM), dtype=np.float32)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            w.write(ids[start : start + len(m)], m)
    meta = {
        "n": n,
        "seed": seed,
        "first_id": first_id,
        "dim": DIM,
        "split": SPLIT,
        "pool_size": len(pool),
        "sha256_unique": len(digests) == n,
        "jpeg_sizes": size_summary(sizes),
        "tsv_bytes": (d / f"{SPLIT}_imgs.tsv").stat().st_size,
        "feat_bytes": (d / f"{SPLIT}_imgs.img_feat.jsonl").stat().st_size,
        "generated_s": round(time.perf_counter() - t0, 1),
        "pool_s": round(t_pool, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"generated {n} images in {meta['generated_s']} s (pool {meta['pool_s']} s) -> {d}")
    return SplitInfo(d, SPLIT, n, first_id, meta)


def print_summary(info: SplitInfo) -> None:
    s = info.meta["jpeg_sizes"]
    print(f"split {info.split!r} in {info.dataset_dir}")
    print(f"  images            {info.n:>10,}   (ids {info.first_id}..{info.first_id + info.n - 1})")
    print(f"  tsv               {info.meta['tsv_bytes'] / 2**20:>10,.0f} MB")
    print(f"  features (1024-d) {info.meta['feat_bytes'] / 2**20:>10,.0f} MB")
    print(
        f"  JPEG size KB      min {s['min_kb']}  p10 {s['p10_kb']}  median {s['median_kb']}  "
        f"p90 {s['p90_kb']}  max {s['max_kb']}  (in 20-80 KB: {s['in_20_80_kb']:.1%})"
    )
    print("  histogram (KB)    " + "  ".join(f"{k}:{v}" for k, v in s["histogram_10kb"].items() if v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=FLICKR30K_CN_TEST)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="1,000 images from a pool of 64 base JPEGs")
    ap.add_argument("--force", action="store_true", help="regenerate even if cached")
    args = ap.parse_args()
    n = QUICK_N if args.quick else args.n
    info = ensure_split(n, args.seed, pool_size=QUICK_POOL if args.quick else 300, force=args.force)
    print_summary(info)
    print(
        json.dumps(
            {"bench": "gen_split", **{k: v for k, v in info.meta.items()}, "dir": str(info.dataset_dir)}
        )
    )


if __name__ == "__main__":
    main()
