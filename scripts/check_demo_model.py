"""Quick self-check of the demo model through the service's own encoder.

Loads ``models/demo/demo-tiny.pt`` with ``ClipEncoder`` (exactly as the service
does), encodes a split of the demo dataset (generated first if missing) and
prints JSON: text-to-image Recall@1/5/10 and their mean (Chinese-CLIP's
definition: a text is a hit when any of its ground-truth images is in the top
k of the whole split; every text counts), image-to-text recall, and an
image-to-image sanity check (share of each image's top-5 neighbours that
contain its largest object's shape and colour).

Usage: ``python scripts/check_demo_model.py [--split valid] [--data datasets/data/demo]``
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from datasets import demo_generator as g
from datasets.demo_generator import (
    DEFAULT_SIZES,
    ensure_demo_data,
    read_images,
    read_scenes,
    read_texts,
)
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "demo" / "demo-tiny.pt"
DEFAULT_ARCH = REPO_ROOT / "config" / "model_configs" / "demo-tiny.json"


def load_encoder(checkpoint: Path = DEFAULT_CHECKPOINT, arch: Path = DEFAULT_ARCH) -> ClipEncoder:
    return ClipEncoder.load(
        ModelSpec(name="demo-tiny", checkpoint=Path(checkpoint), arch=str(arch), device="cpu")
    )


def text_to_image_recall(
    sims: np.ndarray, image_ids: list[int], gt: list[list[int]], ks=(1, 5, 10)
) -> dict[str, float]:
    """sims: (n_texts, n_images). Hit at k if any ground-truth id is in the top k."""
    order = np.argsort(-sims, axis=1, kind="stable")[:, : max(ks)]
    ids = np.asarray(image_ids)[order]
    out = {}
    for k in ks:
        out[f"R@{k}"] = float(np.mean([bool(set(ids[j, :k].tolist()) & set(g)) for j, g in enumerate(gt)]))
    out["mean"] = float(np.mean([out[f"R@{k}"] for k in ks]))
    return out


def image_to_text_recall(
    sims: np.ndarray, image_ids: list[int], texts: list[dict], ks=(1, 5, 10)
) -> dict[str, float]:
    """Per image: hit at k if a text that describes it is among the top k texts."""
    sims_it = sims.T
    order = np.argsort(-sims_it, axis=1, kind="stable")[:, : max(ks)]
    fits: dict[int, set[int]] = {iid: set() for iid in image_ids}
    for j, t in enumerate(texts):
        for iid in t["image_ids"]:
            fits[iid].add(j)
    out = {}
    for k in ks:
        out[f"R@{k}"] = float(
            np.mean([bool(set(order[i, :k].tolist()) & fits[iid]) for i, iid in enumerate(image_ids)])
        )
    out["mean"] = float(np.mean([out[f"R@{k}"] for k in ks]))
    return out


def main_object(scene) -> tuple[str, str]:
    """(shape, colour) of the scene's first big object, else its first object."""
    big = [o for o in scene.objects if o.size == "big"]
    obj = (big or list(scene.objects))[0]
    return obj.shape, obj.colour


def _pairs(scene) -> set[tuple[str, str]]:
    return {(o.shape, o.colour) for o in scene.objects}


def image_to_image_sanity(
    img_feats: np.ndarray, image_ids: list[int], scenes: dict, k: int = 5
) -> dict[str, float]:
    """Top-k neighbours of every image (self excluded): share holding the
    query's main object, share sharing any (shape, colour) object with it."""
    sims = img_feats @ img_feats.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    main_hits, any_hits = [], []
    for i, iid in enumerate(image_ids):
        key = main_object(scenes[iid])
        pairs = _pairs(scenes[iid])
        main_hits += [key in _pairs(scenes[image_ids[j]]) for j in order[i]]
        any_hits += [bool(pairs & _pairs(scenes[image_ids[j]])) for j in order[i]]
    return {
        f"top{k}_share_with_main_object": float(np.mean(main_hits)),
        f"top{k}_share_with_any_common_object": float(np.mean(any_hits)),
    }


def object_probes(
    encoder: ClipEncoder, img_feats: np.ndarray, image_ids: list[int], scenes: dict, k: int = 5
) -> dict[str, float]:
    """For every (shape, colour) held by at least k images of the split: a text
    query "一个<colour>的<shape>" and a freshly rendered one-object photo; the
    share of their top-k images that hold that object."""
    holders: dict[tuple[str, str], int] = {}
    for sc in scenes.values():
        for pair in _pairs(sc):
            holders[pair] = holders.get(pair, 0) + 1
    pairs = sorted(p for p, n in holders.items() if n >= k)
    texts = [f"一个{g.COLOURS[c][0]}的{g.SHAPES[s][0]}" for s, c in pairs]
    photos = [
        g.render_scene(g.simple_scene(s, c, "center", bg_colour="beige"), rng=10_000 + n)
        for n, (s, c) in enumerate(pairs)
    ]
    out = {}
    for name, feats in (("text", encoder.encode_texts(texts)), ("photo", encoder.encode_images(photos))):
        top = np.argsort(-(feats @ img_feats.T), axis=1, kind="stable")[:, :k]
        hits = [pair in _pairs(scenes[image_ids[j]]) for pair, row in zip(pairs, top) for j in row]
        out[f"{name}_query_top{k}_share_with_object"] = float(np.mean(hits))
    out["objects_probed"] = len(pairs)
    return out


def evaluate(encoder: ClipEncoder, data_dir: Path, split: str = "valid") -> dict:
    rows = read_images(data_dir, split)
    texts = read_texts(data_dir, split)
    scenes = read_scenes(data_dir, split)
    image_ids = [iid for iid, _ in rows]
    t0 = time.perf_counter()
    img = encoder.encode_images([Image.open(io.BytesIO(b)) for _, b in rows])
    txt = encoder.encode_texts([t["text"] for t in texts])
    encode_s = time.perf_counter() - t0
    sims = txt @ img.T
    return {
        "split": split,
        "images": len(image_ids),
        "texts": len(texts),
        "dim": int(img.shape[1]),
        "t2i": text_to_image_recall(sims, image_ids, [t["image_ids"] for t in texts]),
        "i2t": image_to_text_recall(sims, image_ids, texts),
        "i2i": image_to_image_sanity(img, image_ids, scenes),
        "object_probes": object_probes(encoder, img, image_ids, scenes),
        "encode_seconds": round(encode_s, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "datasets" / "data" / "demo")
    parser.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--arch", type=Path, default=DEFAULT_ARCH)
    args = parser.parse_args(argv)
    ensure_demo_data(args.data, sizes={args.split: DEFAULT_SIZES[args.split]})
    report = evaluate(load_encoder(args.checkpoint, args.arch), args.data, args.split)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
