"""Command-line bulk work over the same operations the API uses.

    python -m scripts.cli load --dataset datasets/data/demo --split valid --collection demo
    python -m scripts.cli list | count NAME | drop NAME | repair NAME | search NAME "红色的圆形"
    python -m scripts.cli add-folder shop datasets/data/demo/text_images --ocr
    python -m scripts.cli ocr NAME          # turn OCR on and read the images already stored
    python -m scripts.cli search shop "13812345678" --mode text

Milvus Lite opens a file in one process at a time: while the server runs on
the embedded default, load through its API (POST /img/load) instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from config.settings import SettingsError, load_settings
from operations.collections import create_collection, drop_collection, list_collections
from operations.errors import ServiceError
from operations.factory import build_services
from operations.ingest import add_folder, repair_unindexed
from operations.load import load_split
from operations.ocr import enable_ocr, read_backlog
from operations.progress import TqdmProgress
from operations.search import search_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load", help="load a dataset split (tsv/jsonl or LMDB, with or without features)")
    p.add_argument("--dataset", required=True, type=Path, help="dataset directory (Chinese-CLIP layout)")
    p.add_argument("--split", required=True)
    p.add_argument("--collection", default=None)
    p.add_argument("--source", default=None, help="source label stored with each image")
    p.add_argument("--batch-size", type=int, default=None)
    sub.add_parser("list", help="collections with model, index and counts")
    for name in ("count", "drop", "repair"):
        sub.add_parser(name).add_argument("collection")
    p = sub.add_parser("search", help="text search from the terminal")
    p.add_argument("collection")
    p.add_argument("query")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--mode", choices=("visual", "text", "hybrid"), default=None)
    p = sub.add_parser("add-folder", help="add every image of a folder (creates the collection)")
    p.add_argument("collection")
    p.add_argument("folder", type=Path)
    p.add_argument("--source", default="folder")
    p.add_argument("--ocr", action="store_true", help="read the text in the images (OCR)")
    sub.add_parser("ocr", help="turn OCR on for a collection and read its stored images").add_argument(
        "collection"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        svc = build_services(settings, lazy_model=True)
        collection = getattr(args, "collection", None) or settings.default_collection
        if args.command == "load":
            progress = TqdmProgress(f"load {args.split}")
            report = load_split(
                svc,
                collection,
                args.dataset,
                args.split,
                progress,
                source=args.source,
                batch_size=args.batch_size,
            )
            print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        elif args.command == "list":
            print(json.dumps([c.__dict__ for c in list_collections(svc)], ensure_ascii=False, indent=2))
        elif args.command == "count":
            print(
                json.dumps({"vectors": svc.vectors.count(collection), "images": svc.images.count(collection)})
            )
        elif args.command == "drop":
            drop_collection(svc, collection)
            print(f"dropped {collection}")
        elif args.command == "repair":
            print(f"indexed {repair_unindexed(svc, collection)} rows")
        elif args.command == "add-folder":
            create_collection(svc, collection, ocr=True if args.ocr else None)
            counts = add_folder(svc, collection, args.folder, TqdmProgress("add"), source=args.source)
            print(json.dumps(counts, ensure_ascii=False))
        elif args.command == "ocr":
            enable_ocr(svc, collection)
            print(json.dumps(read_backlog(svc, collection, TqdmProgress("ocr")), ensure_ascii=False))
        elif args.command == "search":
            outcome = search_text(svc, collection, args.query, args.top_k, mode=args.mode)
            for m in outcome.matches:
                text = f"  text={m.ocr_text!r}" if m.ocr_text else ""
                print(
                    f"{m.rank:3d}  id={m.row.id}  similarity={m.score:.4f}  source={m.row.source}"
                    f"  signals={','.join(m.signals)}{text}"
                )
            print(json.dumps(outcome.timings_ms))
    except (SettingsError, ServiceError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
