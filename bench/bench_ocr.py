"""OCR speed on CPU: images/s one at a time vs a batch over the OCR pool.

The images are the demo's text images (price tags, a phone number, a shop sign,
...) rendered at listing-photo size, cycled to --images. Three ways, same images,
same run:
- single:  one engine, one image at a time (OCR_THREADS=1, ONNX threads = --onnx-threads);
- batch:   all images submitted at once to a pool of --workers engines
           (OCR_THREADS=--workers, one ONNX thread each), as an add of many images does;
- add:     POST-free: `add_images` of the same images into a collection with OCR on vs
           without, on Milvus Lite + SQLite with the random tiny model (the OCR share of an add).
Prints images/s (median of --runs) and the ratios; --json for a machine-readable line.

    python -m bench.bench_ocr [--quick] [--images 32] [--runs 3] [--workers 2] [--onnx-threads 1]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from datasets.text_images import TEXT_IMAGES, render_text_image
from operations.ocr_engine import OcrEngine


def listing_images(n: int) -> list[Image.Image]:
    """n images: each text image pasted on an 800x600 canvas (a listing photo's size), JPEG round trip."""
    out = []
    for i in range(n):
        spec = TEXT_IMAGES[i % len(TEXT_IMAGES)]
        canvas = Image.new("RGB", (800, 600), (235, 235, 235))
        canvas.paste(render_text_image(spec, seed=i), (40 + (i * 37) % 300, 60 + (i * 53) % 300))
        buf = io.BytesIO()
        canvas.save(buf, format="JPEG", quality=90)
        out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def rate(run, images: list[Image.Image], runs: int) -> tuple[float, int]:
    """Median images/s over `runs`; and the lines read in the last run (a sanity check)."""
    speeds, lines = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        outcomes = run(images)
        speeds.append(len(images) / (time.perf_counter() - t0))
        lines = sum(len(o.lines) for o in outcomes)
        failed = [o.error for o in outcomes if o.error]
        assert not failed, failed[:3]
    return statistics.median(speeds), lines


def add_rates(images: list[Image.Image], runs: int) -> dict[str, float]:
    """Images/s of add_images with and without OCR (Lite + SQLite, tiny random model)."""
    from config.settings import REPO_ROOT, load_settings
    from operations.collections import create_collection
    from operations.factory import build_services
    from operations.ingest import Upload, add_images

    out: dict[str, list[float]] = {"add_without_ocr": [], "add_with_ocr": []}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            model_name="tiny",
            model_arch=str(REPO_ROOT / "tests" / "data" / "tiny-arch.json"),
            model_random_init=True,
            milvus_uri=str(Path(tmp) / "m.db"),
            sqlite_path=Path(tmp) / "i.sqlite3",
            data_root=Path(tmp),
        )
        svc = build_services(settings)
        blobs = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            blobs.append(buf.getvalue())
        for r in range(runs):
            for key, ocr in (("add_without_ocr", False), ("add_with_ocr", True)):
                name = f"b_{key}_{r}"
                create_collection(svc, name, ocr=ocr)
                uploads = [Upload(f"{i}.jpg", b) for i, b in enumerate(blobs)]
                t0 = time.perf_counter()
                results = add_images(svc, name, uploads)
                out[key].append(len(uploads) / (time.perf_counter() - t0))
                assert all(x.status == "added" for x in results)
        svc.vectors.close()
        svc.images.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 images, one run, no add comparison")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--onnx-threads", type=int, default=1)
    ap.add_argument("--no-add", action="store_true", help="skip the add-with/without-OCR comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = 6 if args.quick else args.images
    runs = 1 if args.quick else args.runs
    images = listing_images(n)

    single = OcrEngine(threads=1, queue=n, onnx_threads=args.onnx_threads)
    pool = OcrEngine(threads=args.workers, queue=n, onnx_threads=1)
    try:
        single.read(images[0])  # load the models outside the timing
        for _ in range(args.workers):
            pool.read(images[0])
        single_rate, single_lines = rate(lambda ims: [single.read(im) for im in ims], images, runs)
        batch_rate, batch_lines = rate(pool.read_many, images, runs)
    finally:
        single.close()
        pool.close()
    result = {
        "images": n,
        "runs": runs,
        "single_images_per_s": round(single_rate, 2),
        "batch_images_per_s": round(batch_rate, 2),
        "batch_over_single": round(batch_rate / single_rate, 2),
        "workers": args.workers,
        "onnx_threads": args.onnx_threads,
        "lines_read": single_lines,
        "quick": args.quick,
    }
    assert single_lines == batch_lines, (single_lines, batch_lines)
    if not (args.quick or args.no_add):
        result.update({k: round(v, 2) for k, v in add_rates(images, runs).items()})
    if args.json:
        print(json.dumps(result))
        return
    print(f"OCR of {n} listing-size images with Chinese text, median of {runs} run(s)")
    print(f"  single (1 engine, {args.onnx_threads} ONNX thread(s)): {single_rate:6.2f} images/s")
    print(f"  batch  ({args.workers} engines, 1 ONNX thread each): {batch_rate:6.2f} images/s")
    print(f"  batch / single: {batch_rate / single_rate:.2f}x   lines read per run: {single_lines}")
    for key in ("add_without_ocr", "add_with_ocr"):
        if key in result:
            print(f"  {key.replace('_', ' ')}: {result[key]:6.2f} images/s")
    if args.quick:
        print("  (a --quick run is too small to judge: figures come from a quiet machine, bench/README.md)")


if __name__ == "__main__":
    main()
