"""Image feature extraction on CPU: the batched, overlapped extractor vs one image at a time.

RN50 architecture with random weights (the speed does not depend on the
weights), N generated JPEG images in a tsv, both paths over the same model in
the same run. Prints images/s (median of --runs) and the ratio.

    python -m bench.bench_extract [--images 256] [--runs 3] [--batch-size 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.formats import FeatureWriter, ImageRecord, iter_features, iter_image_tsv, write_image_tsv
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec
from operations.evaluation.extract import decode_image, extract_image_features


def make_tsv(path: Path, n: int, seed: int = 0) -> None:
    """Photo-sized JPEGs (500x375, smooth noise) so decoding costs what it costs in real data."""
    rng = np.random.default_rng(seed)

    def images():
        for i in range(n):
            small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            yield i + 1, buf.getvalue()

    write_image_tsv(path, images())


def one_at_a_time(encoder: ClipEncoder, tsv: Path, out: Path) -> int:
    """The naive loop: read, decode, preprocess and encode each image alone."""
    with FeatureWriter(out, "image_id") as w:
        for rec in iter_image_tsv(tsv):
            assert isinstance(rec, ImageRecord)
            feats = encoder.encode_pixels(encoder.preprocess_images([decode_image(rec.data)]))
            w.write([rec.image_id], feats)
        return w.count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    encoder = ClipEncoder.load(ModelSpec(name="RN50", random_init=True, device="cpu"))
    print(
        f"model RN50 (random weights), dim {encoder.dim}, torch threads {torch.get_num_threads()}, "
        f"{args.images} images 500x375 JPEG"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "bench_imgs.tsv"
        make_tsv(tsv, args.images)
        # Warm-up (first-call allocations), not timed.
        encoder.encode_pixels(encoder.preprocess_images([Image.new("RGB", (64, 64))] * 2))
        batched, single = [], []
        for run in range(args.runs):
            t = time.perf_counter()
            rep = extract_image_features(
                encoder, tsv, Path(tmp) / "b.jsonl", args.batch_size, args.workers, progress=False
            )
            batched.append(rep.written / (time.perf_counter() - t))
            t = time.perf_counter()
            n = one_at_a_time(encoder, tsv, Path(tmp) / "s.jsonl")
            single.append(n / (time.perf_counter() - t))
            print(
                f"run {run + 1}: batched {batched[-1]:.1f} img/s, one-at-a-time {single[-1]:.1f} img/s",
                flush=True,
            )
        # Same features either way (batching must not change results).
        a = np.array([r.vector for r in iter_features(Path(tmp) / "b.jsonl")])
        b = np.array([r.vector for r in iter_features(Path(tmp) / "s.jsonl")])
        max_diff = float(np.abs(a - b).max())
    mb, ms = statistics.median(batched), statistics.median(single)
    print(f"median batched (batch {args.batch_size}, {args.workers} decode threads): {mb:.1f} img/s")
    print(f"median one-at-a-time:                              {ms:.1f} img/s")
    print(f"ratio batched / one-at-a-time: {mb / ms:.2f}x   (max |feature diff| {max_diff:.2e})")


if __name__ == "__main__":
    main()
