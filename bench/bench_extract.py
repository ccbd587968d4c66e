"""Image feature extraction on CPU: batched vs one image at a time, and ONNX Runtime vs torch.

RN50 architecture with random weights (the speed does not depend on the
weights), N generated JPEG images in a tsv, every path over the same model in
the same run: the batched, overlapped extractor with the torch encoder, the
same extractor with the ONNX encoder (ENCODER_BACKEND=onnx, exported from
that torch model into ONNX_CACHE_DIR once, verified), and the naive loop
(torch, one image at a time). Prints images/s (median of --runs), the ratios
and the largest feature difference between the paths.

    python -m bench.bench_extract [--quick] [--images 256] [--runs 3] [--batch-size 32] [--workers 2]
                                  [--threads N] [--no-onnx] [--no-single]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from config.settings import load_settings
from datasets.formats import FeatureWriter, ImageRecord, iter_features, iter_image_tsv, write_image_tsv
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec
from operations.encoding.onnx_export import onnx_encoder_for
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


def _features(path: Path) -> np.ndarray:
    return np.array([r.vector for r in iter_features(path)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="encoder intra-op threads (0 = all cores)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime path")
    ap.add_argument("--no-single", action="store_true", help="skip the one-image-at-a-time loop")
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 images, 1 run")
    args = ap.parse_args()
    if args.quick:
        args.images, args.runs = 16, 1

    spec = ModelSpec(
        name="RN50", random_init=True, device="cpu", text_threads=args.threads, image_threads=args.threads
    )
    encoder = ClipEncoder.load(spec)
    paths: dict[str, object] = {"torch batched": encoder}
    if not args.no_onnx:
        t = time.perf_counter()
        paths["onnx batched"] = onnx_encoder_for(encoder, spec, load_settings().onnx_cache_dir)
        print(f"ONNX encoder ready (exported or cached, verified) in {time.perf_counter() - t:.1f} s")
    print(
        f"model RN50 (random weights), dim {encoder.dim}, encoder threads {encoder.image_threads}, "
        f"{args.images} images 500x375 JPEG, load average {os.getloadavg()[0]:.2f}"
    )
    rates: dict[str, list[float]] = {name: [] for name in paths}
    if not args.no_single:
        rates["torch one-at-a-time"] = []
    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "bench_imgs.tsv"
        make_tsv(tsv, args.images)
        # Warm-up (first-call allocations), not timed.
        for enc in paths.values():
            enc.encode_pixels(enc.preprocess_images([Image.new("RGB", (64, 64))] * 2))
        for run in range(args.runs):
            for name, enc in paths.items():
                t = time.perf_counter()
                rep = extract_image_features(
                    enc, tsv, Path(tmp) / f"{name}.jsonl", args.batch_size, args.workers, progress=False
                )
                rates[name].append(rep.written / (time.perf_counter() - t))
            if not args.no_single:
                t = time.perf_counter()
                n = one_at_a_time(encoder, tsv, Path(tmp) / "single.jsonl")
                rates["torch one-at-a-time"].append(n / (time.perf_counter() - t))
            line = ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items())
            print(f"run {run + 1}: {line}", flush=True)
        # Same features on every path (batching and the backend must not change results).
        ref = _features(Path(tmp) / "torch batched.jsonl")
        diffs = {name: float(np.abs(_features(Path(tmp) / f"{name}.jsonl") - ref).max()) for name in paths}
        if not args.no_single:
            diffs["torch one-at-a-time"] = float(np.abs(_features(Path(tmp) / "single.jsonl") - ref).max())
    medians = {name: statistics.median(v) for name, v in rates.items()}
    print(f"batch {args.batch_size}, {args.workers} decode threads; median of {args.runs} run(s):")
    for name, rate in medians.items():
        print(f"  {name:<22} {rate:8.1f} img/s   max |feature diff| to torch batched {diffs[name]:.2e}")
    base = medians["torch batched"]
    ratios = {}
    if "onnx batched" in medians:
        ratios["onnx_vs_torch_batched"] = medians["onnx batched"] / base
        print(f"ratio ONNX batched / torch batched: {ratios['onnx_vs_torch_batched']:.2f}x")
    if "torch one-at-a-time" in medians:
        ratios["batched_vs_one_at_a_time"] = base / medians["torch one-at-a-time"]
        print(f"ratio torch batched / one-at-a-time: {ratios['batched_vs_one_at_a_time']:.2f}x")
    print(json.dumps({"bench": "extract", "images": args.images, "img_per_s": medians, "ratios": ratios}))


if __name__ == "__main__":
    main()
