"""Fidelity of the encoder backends against torch float32 (not a timing bench: any machine load is fine).

Demo model on its valid split (images and texts of datasets/data/demo, made if
missing): text vectors of ONNX float32, ONNX int8 (TEXT_INT8 on the ONNX
backend) and torch int8 (TEXT_INT8 on torch), each against torch float32:
cosine per text (min, median), top-10 overlap of the text-to-image results
(images encoded by torch float32; the image tower never changes with
TEXT_INT8), and text-to-image Recall@1/5/10. With --rn50, the same cosines and
the overlap against random unit image vectors for RN50 with random weights.

    python -m bench.fidelity_encoders [--rn50] [--rn50-images 31783]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.demo_generator import DEFAULT_SIZES, ensure_demo_data, read_images, read_texts
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec
from operations.encoding.onnx_export import onnx_encoder_for
from scripts.check_demo_model import DEFAULT_ARCH, DEFAULT_CHECKPOINT, REPO_ROOT, text_to_image_recall


def top_overlap(a: np.ndarray, b: np.ndarray, images: np.ndarray, k: int = 10) -> float:
    """Mean share of the top-k images of `a`'s texts also in `b`'s top k."""
    ta = np.argsort(-(a @ images.T), axis=1, kind="stable")[:, :k]
    tb = np.argsort(-(b @ images.T), axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]))


def variants(spec: ModelSpec, cache: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """Text vectors of every backend variant, torch float32 first."""
    torch_fp32 = ClipEncoder.load(spec)
    out = {"torch float32": torch_fp32.encode_texts(texts)}
    out["onnx float32"] = onnx_encoder_for(torch_fp32, spec, cache).encode_texts(texts)
    out["onnx int8"] = onnx_encoder_for(torch_fp32, spec, cache, int8=True).encode_texts(texts)
    out["torch int8"] = ClipEncoder.load(spec, text_int8=True).encode_texts(texts)
    return out


def report(name: str, vecs: dict[str, np.ndarray], images: np.ndarray, image_ids=None, gt=None) -> None:
    ref = vecs["torch float32"]
    print(f"\n{name}: {len(ref)} texts, {len(images)} images")
    print("| text tower | cosine to torch fp32 min / median | top-10 overlap | R@1 | R@5 | R@10 |")
    print("|---|---|---|---|---|---|")
    for variant, v in vecs.items():
        cos = np.sum(v * ref, axis=1)
        recall = ["-", "-", "-"]
        if gt is not None:
            r = text_to_image_recall(v @ images.T, image_ids, gt)
            recall = [f"{r['R@1']:.4f}", f"{r['R@5']:.4f}", f"{r['R@10']:.4f}"]
        overlap = top_overlap(v, ref, images)
        cosine = f"{cos.min():.6f} / {np.median(cos):.6f}"
        print(f"| {variant} | {cosine} | {overlap:.4f} | {' | '.join(recall)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO_ROOT / "datasets" / "data" / "demo")
    ap.add_argument("--rn50", action="store_true", help="also RN50 with random weights")
    ap.add_argument("--rn50-images", type=int, default=31_783, help="random unit image vectors for RN50")
    args = ap.parse_args()
    ensure_demo_data(args.data, sizes={"valid": DEFAULT_SIZES["valid"]})
    rows = read_images(args.data, "valid")
    texts = read_texts(args.data, "valid")
    with tempfile.TemporaryDirectory() as tmp:
        spec = ModelSpec(
            name="demo-tiny", checkpoint=DEFAULT_CHECKPOINT, arch=str(DEFAULT_ARCH), device="cpu"
        )
        images = ClipEncoder.load(spec).encode_images([Image.open(io.BytesIO(b)) for _, b in rows])
        vecs = variants(spec, Path(tmp), [t["text"] for t in texts])
        report("demo model, valid split", vecs, images, [i for i, _ in rows], [t["image_ids"] for t in texts])
        if args.rn50:
            rng = np.random.default_rng(0)
            random_images = rng.standard_normal((args.rn50_images, 1024)).astype(np.float32)
            random_images /= np.linalg.norm(random_images, axis=1, keepdims=True)
            spec = ModelSpec(name="RN50", random_init=True, device="cpu")
            vecs = variants(spec, Path(tmp), [t["text"] for t in texts[:500]])
            report("RN50, random weights (random unit image vectors)", vecs, random_images)


if __name__ == "__main__":
    main()
