"""Command-line bulk work over the same operations the API uses.

    python -m scripts.cli load --dataset datasets/data/demo --split valid --collection demo
    python -m scripts.cli list | count NAME | drop NAME | repair NAME | search NAME "红色的圆形"
    python -m scripts.cli upgrade-ids NAME  # SQLite tables of older versions: ids never given again
    python -m scripts.cli add-folder shop datasets/data/demo/text_images --ocr
    python -m scripts.cli ocr NAME          # turn OCR on and read the images already stored
    python -m scripts.cli phash NAME        # pHashes for images stored without one (a dataset load's)
    python -m scripts.cli duplicates NAME   # compute the duplicate listing, print its first groups
    python -m scripts.cli retention NAME --created-before 2026-01-01 [--source S ...]
    python -m scripts.cli search shop "13812345678" --mode text
    python -m scripts.cli calibrate --dataset datasets/data/demo --split valid --collection demo
    python -m scripts.cli rebuild demo --model vitb16 --dataset datasets/data/demo --split valid --switch
    python -m scripts.cli switch demo demo__v1   # back to the old version

Milvus Lite opens a file in one process at a time: while the server runs on
the embedded default, load through its API (POST /img/load) instead.
"""

from __future__ import annotations

import argparse
import calendar
import datetime
import json
import logging
import sys
import uuid
from pathlib import Path

from config.settings import SettingsError, load_settings
from operations.collections import create_collection, describe_collection, drop_collection, list_collections
from operations.domain import IndexSpec
from operations.duplicate_groups import check_tiers, compute_duplicates
from operations.duplicate_listing import latest_listing, read_page
from operations.errors import ServiceError
from operations.factory import build_services
from operations.ingest import add_folder, repair_unindexed
from operations.load import load_split
from operations.ocr import enable_ocr, read_backlog
from operations.phash_backfill import backfill_phashes
from operations.progress import TqdmProgress
from operations.rebuild import rebuild_params, run_rebuild, switch_to
from operations.reindex import GAVE_UP_STATES
from operations.relevance.calibrate import calibrate_model
from operations.relevance.cutoff import CutOptions
from operations.relevance.search import RelevanceQuery, relevance_search
from operations.retention import RetentionRule, apply_retention
from operations.stores.sql_writer_leases import this_process
from operations.tracing import configure_logging


def _ids(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise SystemExit("error: ids must be comma-separated integers") from None


def _timestamp(value: str) -> int:
    """Unix seconds, or a date YYYY-MM-DD (its first second, UTC)."""
    if value.isdigit():
        return int(value)
    try:
        return calendar.timegm(datetime.date.fromisoformat(value).timetuple())
    except ValueError:
        raise argparse.ArgumentTypeError("unix seconds or a date YYYY-MM-DD") from None


def _duplicates(svc, collection: str, args: argparse.Namespace) -> None:
    """Compute a listing in this process (unless --stored) and print its first page as JSON."""
    if not args.stored:
        tiers = check_tiers([t.strip() for t in args.tiers.split(",") if t.strip()])
        compute_duplicates(svc, collection, uuid.uuid4().hex, TqdmProgress("duplicates"), tiers=tiers)
    run = latest_listing(svc, collection)
    if run is None:
        raise SystemExit(f"error: no duplicate listing of {collection!r} yet: run without --stored")
    page = read_page(svc, collection, run, limit=args.limit)
    out = {
        "job_id": run.run_id,
        "images": run.images,
        "without_phash": run.without_phash,
        "counts": run.counts,
        "groups": [
            {"group": g.group_no, "tier": g.tier, "size": g.size, "members": [m.__dict__ for m in g.members]}
            for g in page.groups
        ],
        "next_after": page.next_after,
    }
    print(json.dumps(out, ensure_ascii=False, indent=2))


def _reindex_hint(svc, collection: str) -> None:
    """After a load or add-folder: say so on stderr when the collection has grown into a re-index.

    The command line runs no jobs, so the automatic re-index (operations.reindex) starts only
    with the server's next add to the collection; a user who loads offline learns it here.
    """
    auto = describe_collection(svc, collection).auto_index
    if not auto or not auto["reindex_due"]:
        return
    job = auto.get("reindex_job")
    grown = (
        f"{collection}: INDEX_TYPE=AUTO chose FLAT and it now holds {auto['flat_below']:,} vectors or more"
    )
    command = f"`python -m scripts.cli rebuild {collection} --switch`"
    if job is not None and job["state"] in GAVE_UP_STATES:
        # No automatic re-index follows a rebuild that gave up (operations.reindex): say so.
        print(
            f"{grown}, but its rebuild job {job['id']} {job['state']} and no automatic re-index follows: "
            f"resume it (`POST /img/jobs/{job['id']}/resume`) or re-index with {command}",
            file=sys.stderr,
        )
    elif job is None:  # none under way
        print(
            f"{grown} (AUTO_INDEX_FLAT_BELOW): re-index it as HNSW with {command}"
            + (", or the server's next add to it starts that job" if svc.settings.auto_reindex else ""),
            file=sys.stderr,
        )


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
    p.add_argument(
        "--bulk-import",
        action="store_true",
        help="a Milvus server imports the vectors from files (MILVUS_IMPORT_DIR) instead of streamed upserts",
    )
    p.add_argument("--bulk-file-rows", type=int, default=None, help="rows per import file (default 20000)")
    sub.add_parser("list", help="collections with model, index and counts")
    for name in ("count", "drop"):
        sub.add_parser(name).add_argument("collection")
    sub.add_parser(
        "repair",
        help="index every row without its vector now, whatever its age (the servers' periodic repair, "
        "REPAIR_INTERVAL_S, takes only rows added over 300 s ago); run it when no add is under way",
    ).add_argument("collection")
    sub.add_parser(
        "upgrade-ids",
        help="SQLite: rebuild an image table of an older version so that a deleted image's id is never "
        "given again (copies every row once; run it with the server stopped)",
    ).add_argument("collection")
    p = sub.add_parser("search", help="search from the terminal (query language: 海边 -人物, 红色:2 汽车)")
    p.add_argument("collection")
    p.add_argument("query")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--mode", choices=("visual", "text", "hybrid"), default=None)
    p.add_argument("--min-relevance", type=float, default=None, help="0..1, calibrated models only")
    p.add_argument("--cut", choices=("none", "auto"), default="none")
    p.add_argument("--order-by", choices=("relevance", "created_at"), default="relevance")
    p.add_argument("--order", choices=("desc", "asc"), default="desc")
    p.add_argument("--image-id", type=int, default=None, help="a stored image searched with the query")
    p.add_argument("--positive-ids", default="", help="comma-separated ids: more like these")
    p.add_argument("--negative-ids", default="", help="comma-separated ids: not like these")
    p = sub.add_parser("add-folder", help="add every image of a folder (creates the collection)")
    p.add_argument("collection")
    p.add_argument("folder", type=Path)
    p.add_argument("--source", default="folder")
    p.add_argument("--ocr", action="store_true", help="read the text in the images (OCR)")
    sub.add_parser("ocr", help="turn OCR on for a collection and read its stored images").add_argument(
        "collection"
    )
    sub.add_parser("phash", help="compute the pHash of stored images that have none").add_argument(
        "collection"
    )
    p = sub.add_parser("duplicates", help="compute the duplicate groups (pHash, CLIP) and print a page")
    p.add_argument("collection")
    p.add_argument("--tiers", default="phash,clip", help="comma-separated: phash, clip")
    p.add_argument("--limit", type=int, default=20, help="groups printed")
    p.add_argument("--stored", action="store_true", help="print the stored listing, compute nothing")
    p = sub.add_parser(
        "retention", help="delete images created before a time and/or of sources (run again to finish)"
    )
    p.add_argument("collection")
    p.add_argument("--created-before", type=_timestamp, help="unix seconds or YYYY-MM-DD (UTC)")
    p.add_argument("--source", action="append", default=[], help="a source to delete (repeatable)")
    p = sub.add_parser(
        "calibrate", help="fit the relevance calibration of a collection's model on a labelled split"
    )
    p.add_argument("--dataset", required=True, type=Path, help="dataset directory (Chinese-CLIP layout)")
    p.add_argument("--split", required=True, help="split with ${split}_texts.jsonl (image_ids)")
    p.add_argument("--collection", default=None, help="its model is calibrated (default: the main model)")
    p = sub.add_parser(
        "rebuild",
        help="rebuild a collection into a new version with another model or index, check its recall, "
        "switch (README: Rebuilds)",
    )
    p.add_argument("collection")
    p.add_argument("--model", default=None, help="a configured model (default: the collection's)")
    p.add_argument("--index-type", choices=("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTO"), default=None)
    p.add_argument("--index-params", type=json.loads, default={}, help='JSON, e.g. {"M": 16}')
    p.add_argument("--search-params", type=json.loads, default={}, help='JSON, e.g. {"ef": 64}')
    p.add_argument("--dataset", type=Path, default=None, help="a labelled split's directory (recall check)")
    p.add_argument("--split", default=None)
    p.add_argument("--min-recall", type=float, default=None, help="Recall@10 the switch needs")
    p.add_argument("--switch", action="store_true", help="switch the name when built (and min-recall met)")
    p = sub.add_parser("switch", help="point a collection's name at another version of it")
    p.add_argument("collection")
    p.add_argument("to", help="the version, e.g. images__v2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        # The service's log format (a Kubernetes Job's lines parse like the pods'); the level is
        # LOG_LEVEL only when set, else WARNING: INFO lines would break up the progress bar.
        configure_logging(
            settings.log_format, settings.log_level if "log_level" in settings.model_fields_set else "WARNING"
        )
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
                bulk_import=args.bulk_import,
                bulk_file_rows=args.bulk_file_rows,
                writer=this_process("imgsearch load"),
            )
            print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
            _reindex_hint(svc, collection)
        elif args.command == "list":
            print(json.dumps([c.__dict__ for c in list_collections(svc)], ensure_ascii=False, indent=2))
        elif args.command == "count":
            print(
                json.dumps({"vectors": svc.vectors.count(collection), "images": svc.images.count(collection)})
            )
        elif args.command == "drop":
            drop_collection(svc, collection)
            print(f"dropped {collection}")
        elif args.command == "upgrade-ids":
            copied = svc.images.stop_id_reuse(collection)
            done = "nothing to do" if copied is None else f"table rebuilt, {copied} rows"
            print(f"{collection}: {done}; a deleted image's id is never given again")
        elif args.command == "repair":
            print(f"indexed {repair_unindexed(svc, collection)} rows")
        elif args.command == "add-folder":
            create_collection(svc, collection, ocr=True if args.ocr else None)
            counts = add_folder(svc, collection, args.folder, TqdmProgress("add"), source=args.source)
            print(json.dumps(counts, ensure_ascii=False))
            _reindex_hint(svc, collection)
        elif args.command == "ocr":
            enable_ocr(svc, collection)
            print(json.dumps(read_backlog(svc, collection, TqdmProgress("ocr")), ensure_ascii=False))
        elif args.command == "phash":
            print(json.dumps(backfill_phashes(svc, collection, TqdmProgress("phash"))))
        elif args.command == "duplicates":
            _duplicates(svc, collection, args)
        elif args.command == "retention":
            rule = RetentionRule(args.created_before, tuple(args.source))
            print(apply_retention(svc, collection, rule, TqdmProgress("retention")).message())
        elif args.command == "search":
            rq = RelevanceQuery(
                query=args.query,
                top_k=args.top_k,
                image_id=args.image_id,
                positive_ids=_ids(args.positive_ids),
                negative_ids=_ids(args.negative_ids),
                cut=CutOptions(args.min_relevance, args.cut, args.order_by, args.order),
                mode=args.mode,
            )
            outcome, rel_report = relevance_search(svc, collection, rq)
            for m in outcome.matches:
                rel = rel_report.relevance.get(m.row.id)  # type: ignore[arg-type]  # stored rows have ids
                shown = f"{rel:.3f}" if rel is not None else "-"
                text = f"  text={m.ocr_text!r}" if m.ocr_text else ""
                print(
                    f"{m.rank:3d}  id={m.row.id}  similarity={m.score:.4f}  relevance={shown}  "
                    f"created_at={m.row.created_at}  source={m.row.source}  "
                    f"signals={','.join(m.signals)}{text}"
                )
            if not rel_report.calibrated:
                print(f"relevance: none ({rel_report.note})")
            print(json.dumps(outcome.timings_ms))
        elif args.command == "rebuild":
            index = None
            if args.index_type:
                index = IndexSpec(args.index_type, dict(args.index_params), dict(args.search_params))
            params = rebuild_params(
                svc,
                collection,
                args.model,
                index,
                str(args.dataset) if args.dataset else None,
                args.split,
                args.min_recall,
                args.switch,
            )
            print(run_rebuild(svc, collection, params, TqdmProgress(f"rebuild {params['target']}")))
        elif args.command == "switch":
            print(json.dumps(switch_to(svc, collection, args.to)))
        elif args.command == "calibrate":
            cal, path = calibrate_model(svc, args.dataset, args.split, collection=args.collection)
            print(json.dumps({**cal.to_json(), "stored_in": str(path)}, ensure_ascii=False, indent=2))
    except (SettingsError, ServiceError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
