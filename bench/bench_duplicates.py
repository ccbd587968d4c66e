"""Precision and recall of the duplicate tiers of a listing, on a labelled set made by the demo
generator (quality figures, not timings: the set, the model and the code are deterministic).

The set: the demo train split's families of look-alikes (a base scene and variants with one
object's shape, colour or place changed). The first image of each family is an original; each
original also gets copies: re-encoded at JPEG quality 35, resized to half, cropped by 2% and by
5% a side. The other family members are the "different but similar" photos. Labels: a pair is
"the same picture" when both are an original or its copies; "similar" when both come from one
family (copies included).

The path measured is the one a user takes: the split is written in Chinese-CLIP's layout
(no features), loaded into Milvus Lite + SQLite with the demo model (models/demo/; the load
encodes the images and stores no pHash), and listed by `compute_duplicates` (which backfills
the pHashes first): once per tier alone and once with both. A listing claims every pair of
images sharing a group; precision = claimed pairs that are right / claimed pairs, recall =
right pairs claimed / right pairs. "phash" is judged against "the same picture", "clip" and
the combined listing against "similar" (and, for clip, also against "the same picture").

Then a sweep over the thresholds on direct links (no groups): each pHash distance 0..7 and each
cosine 0.80..0.99, what pairs within it are right.

    python -m bench.bench_duplicates [--families 60] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from bench._common import other_load, table
from config.settings import REPO_ROOT, load_settings
from datasets.demo_generator import generate_split
from datasets.formats import write_image_tsv
from operations.duplicate_groups import compute_duplicates, duplicate_store
from operations.factory import build_services
from operations.load import load_split
from operations.phash import hamming
from operations.progress import Counter

COPY_KINDS = ("jpeg35", "resize50", "crop2", "crop5")
FIRST_ID = 1


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    im.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_copy(data: bytes, kind: str) -> bytes:
    im = Image.open(io.BytesIO(data))
    if kind == "jpeg35":
        return _jpeg(im, 35)
    if kind == "resize50":
        return _jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS))
    f = {"crop2": 0.02, "crop5": 0.05}[kind]
    w, h = im.size
    dx, dy = int(w * f), int(h * f)
    return _jpeg(im.crop((dx, dy, w - dx, h - dy)))


def labelled_set(families: int) -> tuple[list[tuple[int, bytes]], dict[int, tuple[int, int, str]]]:
    """(records for the tsv, id -> (picture, family, kind))."""
    split = generate_split("train", families * 3)
    records: list[tuple[int, bytes]] = []
    labels: dict[int, tuple[int, int, str]] = {}
    first_of: dict[int, int] = {}
    for i, fam in enumerate(split.families):
        first_of.setdefault(fam, i)

    def add(data: bytes, picture: int, fam: int, kind: str) -> None:
        image_id = FIRST_ID + len(records)
        records.append((image_id, data))
        labels[image_id] = (picture, fam, kind)

    for i, fam in enumerate(split.families):
        add(split.jpegs[i], i, fam, "original" if first_of[fam] == i else "variant")
    for fam, i in first_of.items():
        for kind in COPY_KINDS:
            add(make_copy(split.jpegs[i], kind), i, fam, kind)
    return records, labels


def claimed_pairs(svc, collection: str, run_id: str) -> set[tuple[int, int]]:
    """Every pair of images sharing a group of the listing `run_id`."""
    store = duplicate_store(svc)
    pairs: set[tuple[int, int]] = set()
    after = 0
    while groups := store.groups_after(collection, run_id, after, 100, None, 100_000):
        for g in groups:
            ids = sorted(m.image_id for m in g.members)
            pairs.update(itertools.combinations(ids, 2))
        after = groups[-1].group_no
    return pairs


def score(claimed: set[tuple[int, int]], right: set[tuple[int, int]]) -> dict:
    hits = len(claimed & right)
    return {
        "claimed": len(claimed),
        "right": hits,
        "precision": hits / len(claimed) if claimed else float("nan"),
        "recall": hits / len(right) if right else float("nan"),
    }


def kind_recall(claimed: set[tuple[int, int]], labels: dict, kind: str) -> float:
    """Share of the images of `kind` grouped with their family's original."""
    original = {p: i for i, (p, _, k) in labels.items() if k == "original"}
    fam_original = {labels[i][1]: i for i in original.values()}
    members = [i for i, (_, _, k) in labels.items() if k == kind]
    together = sum(tuple(sorted((i, fam_original[labels[i][1]]))) in claimed for i in members)
    return together / len(members)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=int, default=60, help="families of look-alikes (3 images each)")
    ap.add_argument("--quick", action="store_true", help="12 families")
    ap.add_argument("--json", action="store_true", help="only the final JSON line")
    args = ap.parse_args()
    families = 12 if args.quick else args.families
    load_before = other_load()
    t0 = time.perf_counter()
    records, labels = labelled_set(families)
    ids = sorted(labels)
    n_families = len({fam for _, fam, _ in labels.values()})
    same_picture = {(a, b) for a, b in itertools.combinations(ids, 2) if labels[a][0] == labels[b][0]}
    similar = {(a, b) for a, b in itertools.combinations(ids, 2) if labels[a][1] == labels[b][1]}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(
            model_name="demo-tiny",
            model_checkpoint=REPO_ROOT / "models" / "demo" / "demo-tiny.pt",
            model_arch=str(REPO_ROOT / "config" / "model_configs" / "demo-tiny.json"),
            milvus_uri=str(root / "m.db"),
            sqlite_path=root / "i.sqlite3",
            data_root=root,
        )
        svc = build_services(settings)
        (root / "dups").mkdir()
        write_image_tsv(root / "dups" / "test_imgs.tsv", records)
        collection = "dups"
        report = load_split(svc, collection, root / "dups", "test", Counter())
        assert report.loaded == len(records), report.as_dict()
        results: dict[str, dict] = {}
        runs = {
            "phash": (["phash"], None),
            "phash, pHash alone": (["phash"], 0.0),
            "clip": (["clip"], None),
            "both": (["phash", "clip"], None),
        }
        pairs: dict[str, set] = {}
        for name, (tiers, min_cosine) in runs.items():
            run_id = uuid.uuid4().hex
            run = compute_duplicates(svc, collection, run_id, tiers=tiers, phash_min_cosine=min_cosine)
            assert run is not None and run.without_phash == 0
            pairs[name] = claimed_pairs(svc, collection, run_id)
        results["phash vs same picture"] = score(pairs["phash"], same_picture)
        results["phash (PHASH_MIN_COSINE=0) vs same picture"] = score(
            pairs["phash, pHash alone"], same_picture
        )
        results["clip vs similar"] = score(pairs["clip"], similar)
        results["clip vs same picture"] = score(pairs["clip"], same_picture)
        results["both vs similar"] = score(pairs["both"], similar)
        per_kind = {
            tier: {k: kind_recall(pairs[tier], labels, k) for k in (*COPY_KINDS, "variant")}
            for tier in ("phash", "clip")
        }
        # Direct links at each threshold (no groups): the stored hashes and vectors.
        hashes = dict(svc.images.phash_rows(collection, -1, 10**6))
        vecs = svc.vectors.get_vectors(collection, ids)
        m = np.stack([vecs[i] for i in ids])
        cos = m @ m.T
        index = {i: n for n, i in enumerate(ids)}
        all_pairs = list(itertools.combinations(ids, 2))
        sweep_phash = []
        floor = settings.phash_min_cosine
        for d in range(8):
            claimed = {(a, b) for a, b in all_pairs if hamming(hashes[a], hashes[b]) <= d}
            confirmed = {(a, b) for a, b in claimed if cos[index[a], index[b]] >= floor}
            sweep_phash.append((d, score(claimed, same_picture), score(confirmed, same_picture)))
        sweep_clip = []
        for t in (0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98, 0.99):
            claimed = {(a, b) for a, b in all_pairs if cos[index[a], index[b]] >= t}
            sweep_clip.append((t, score(claimed, similar), score(claimed, same_picture)))
        svc.vectors.close()
        svc.images.close()

    elapsed = time.perf_counter() - t0
    s = settings
    out = {
        "bench": "duplicates",
        "families": n_families,
        "images": len(records),
        "same_picture_pairs": len(same_picture),
        "similar_pairs": len(similar),
        "phash_max_distance": s.phash_max_distance,
        "phash_min_cosine": s.phash_min_cosine,
        "near_duplicate_threshold": s.near_duplicate_threshold,
        "listing": results,
        "recall_by_kind": per_kind,
        "sweep_phash": [{"distance": d, "phash": r1, "confirmed": r2} for d, r1, r2 in sweep_phash],
        "sweep_clip": [{"threshold": t, "similar": r1, "same_picture": r2} for t, r1, r2 in sweep_clip],
        "load_average": round(load_before, 2),
        "seconds": round(elapsed, 1),
    }
    if not args.json:
        print(
            f"{len(records)} images: {n_families} families of look-alikes + {len(COPY_KINDS)} copies of each "
            f"original; {len(same_picture)} same-picture pairs, {len(similar)} similar pairs. "
            f"PHASH_MAX_DISTANCE={s.phash_max_distance}, PHASH_MIN_COSINE={s.phash_min_cosine}, "
            f"NEAR_DUPLICATE_THRESHOLD={s.near_duplicate_threshold}, "
            f"demo model, Milvus Lite + SQLite, load average {load_before:.2f}\n"
        )
        rows = [(k, r["claimed"], r["right"], r["precision"], r["recall"]) for k, r in results.items()]
        print(table(["listing", "pairs claimed", "right", "precision", "recall"], rows), "\n")
        kinds = (*COPY_KINDS, "variant")
        rows = [(t, *(per_kind[t][k] for k in kinds)) for t in per_kind]
        print(table(["grouped with its original", *kinds], rows))
        print()
        print(
            table(
                [
                    "pHash distance <=",
                    "pairs",
                    "precision (same picture)",
                    "recall",
                    f"with cosine >= {s.phash_min_cosine}: pairs",
                    "precision",
                    "recall",
                ],
                [
                    (
                        d,
                        r1["claimed"],
                        r1["precision"],
                        r1["recall"],
                        r2["claimed"],
                        r2["precision"],
                        r2["recall"],
                    )
                    for d, r1, r2 in sweep_phash
                ],
            )
        )
        print()
        print(
            table(
                ["cosine >=", "pairs", "precision (similar)", "recall (similar)", "precision (same picture)"],
                [
                    (f"{t:.2f}", r1["claimed"], r1["precision"], r1["recall"], r2["precision"])
                    for t, r1, r2 in sweep_clip
                ],
            )
        )
        print()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
