"""Command line of the evaluation chain: `python -m operations.evaluation.cli SUBCOMMAND --help`.

Subcommands (each prints one JSON result on stdout; progress goes to stderr):

  build-lmdb   tsv/jsonl -> lmdb/${split}/{imgs,pairs}  (cn_clip's build_lmdb_dataset.py)
  extract      image/text features jsonl                (cn_clip's extract_features.py)
  predict      exact top-k predictions, or --via-store   (cn_clip's make_topk_predictions.py)
  evaluate     Recall@1/5/10 + mean                      (cn_clip's evaluation.py)
  crosscheck   agreement of two prediction files
  reliability  predicted vs observed precision per relevance bin (the model's calibration)

Paths default to Chinese-CLIP's names under --dataset-dir for --split; every
path can also be given explicitly. The model comes from Settings (env
MODEL_NAME, MODEL_CHECKPOINT, MODEL_ARCH, DEVICE, ...) unless overridden by
flags; the vector store from MILVUS_URI / MILVUS_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from datasets.formats import dataset_paths

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = REPO_ROOT / "datasets" / "data" / "demo"


def _print(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset-dir",
        type=Path,
        default=DEFAULT_DATASET,
        help="directory with ${split}_imgs.tsv etc. (default: <repo>/datasets/data/demo)",
    )
    p.add_argument("--split", default="valid", help="dataset split (default: valid)")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (defaults from Settings / env)")
    g.add_argument("--model-name", help="MODEL_NAME: cn_clip name or label of a custom checkpoint")
    g.add_argument("--checkpoint", type=Path, help="MODEL_CHECKPOINT: local checkpoint file")
    g.add_argument("--arch", help="MODEL_ARCH: JSON config file, 'VISION@TEXT' struct or cn_clip name")
    g.add_argument("--device", help="DEVICE: auto, cpu, cuda, cuda:N")
    g.add_argument("--half", action="store_true", default=None, help="fp16 inference (GPU only)")
    g.add_argument(
        "--random-init", action="store_true", default=None, help="random weights (benchmarks/tests only)"
    )
    g.add_argument(
        "--encoder-backend",
        choices=("auto", "onnx", "torch"),
        help="ENCODER_BACKEND: auto (ONNX Runtime when its export verifies), onnx or torch",
    )
    g.add_argument("--text-int8", action="store_true", default=None, help="TEXT_INT8: int8 text tower (CPU)")


def _settings(args: argparse.Namespace):
    from config.settings import load_settings

    overrides = {}
    for flag, key in (
        ("model_name", "model_name"),
        ("checkpoint", "model_checkpoint"),
        ("arch", "model_arch"),
        ("device", "device"),
        ("half", "half_precision"),
        ("random_init", "model_random_init"),
        ("encoder_backend", "encoder_backend"),
        ("text_int8", "text_int8"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "milvus_uri", None):
        overrides["milvus_uri"] = args.milvus_uri
    return load_settings(**overrides)


def _encoder(args: argparse.Namespace):
    settings = _settings(args)
    try:
        from operations.factory import build_encoder
    except ImportError:  # before the factory existed
        from operations.encoding.clip_encoder import ClipEncoder
        from operations.encoding.model_files import ModelSpec

        return ClipEncoder.load(
            ModelSpec(
                name=settings.model_name,
                checkpoint=settings.model_checkpoint,
                arch=settings.model_arch,
                download_root=settings.model_download_root,
                device=settings.device,
                half=settings.half_precision,
                random_init=settings.model_random_init,
            )
        )
    return build_encoder(settings)


def _vector_store(args: argparse.Namespace):
    settings = _settings(args)
    try:
        from operations.factory import build_vector_store
    except ImportError:
        from operations.stores.milvus_store import MilvusVectorStore

        return MilvusVectorStore(settings.milvus_uri, settings.milvus_token, settings.milvus_timeout_s)
    return build_vector_store(settings)


# --------------------------------------------------------------------------


def cmd_build_lmdb(args: argparse.Namespace) -> int:
    from datasets.lmdb_io import build_lmdb

    results = []
    for split in [s for s in args.splits.split(",") if s]:
        report = build_lmdb(args.dataset_dir, split, args.lmdb_dir)
        results.append(report.as_dict())
    _print({"lmdb": results})
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from operations.evaluation.extract import extract_image_features, extract_text_features

    paths = dataset_paths(args.dataset_dir, args.split)
    if not (args.images or args.texts):
        args.images = args.texts = True
    encoder = _encoder(args)
    out: dict = {
        "model": encoder.model_name,
        "dim": encoder.dim,
        "backend": getattr(encoder, "backend", "torch"),
    }
    if args.texts:
        report = extract_text_features(
            encoder,
            args.text_data or paths.texts_jsonl,
            args.text_feat_output or paths.txt_feat,
            args.text_batch_size,
            args.text_preprocess,
            progress=not args.quiet,
        )
        out["texts"] = report.as_dict()
    if args.images:
        source = args.image_data or (paths.imgs_tsv if args.image_source == "tsv" else paths.lmdb_imgs)
        report = extract_image_features(
            encoder,
            source,
            args.image_feat_output or paths.img_feat,
            args.img_batch_size,
            args.workers,
            progress=not args.quiet,
        )
        out["images"] = {"source": str(source), **report.as_dict()}
    _print(out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    paths = dataset_paths(args.dataset_dir, args.split)
    image_feats = args.image_feats or paths.img_feat
    text_feats = args.text_feats or paths.txt_feat
    if not args.via_store:
        from operations.evaluation.knn import predict_files

        output = args.output or (
            paths.predictions
            if args.direction == "t2i"
            else paths.dataset_dir / f"{args.split}_predictions.tr.jsonl"
        )
        _print(
            predict_files(
                image_feats,
                text_feats,
                output,
                args.top_k,
                args.direction,
                args.query_chunk,
                args.index_chunk,
                progress=not args.quiet,
            )
        )
        return 0
    if args.direction != "t2i":
        raise SystemExit("--via-store predicts text->image only (the store holds image vectors)")
    from operations.domain import IndexSpec
    from operations.evaluation.store_predict import load_features_into_store, predict_files_via_store
    from operations.names import validate_name

    collection = validate_name(args.collection or f"eval_{args.split}".replace("-", "_").replace(".", "_"))
    output = args.output or paths.dataset_dir / f"{args.split}_predictions.store.jsonl"
    store = _vector_store(args)
    result: dict = {}
    try:
        if args.load or args.recreate:
            settings = _settings(args)
            index = IndexSpec(
                args.index_type or settings.index_type,
                json.loads(args.index_params) if args.index_params else dict(settings.index_params),
                json.loads(args.search_params) if args.search_params else dict(settings.search_params),
            )
            result["load"] = load_features_into_store(
                store,
                collection,
                image_feats,
                args.store_model_name or settings.model_name,
                index.check(),
                args.load_batch_size,
                recreate=args.recreate,
            )
        result["predict"] = predict_files_via_store(
            store, collection, text_feats, output, args.top_k, args.search_batch_size, progress=not args.quiet
        )
    finally:
        store.close()
    _print(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from operations.evaluation.recall import evaluate

    paths = dataset_paths(args.dataset_dir, args.split)
    predictions = args.predictions or paths.predictions
    result = evaluate(args.texts or paths.texts_jsonl, predictions, args.direction)
    if args.output:
        Path(args.output).write_text(json.dumps(result), encoding="utf-8")
    _print(result)
    return 0 if result["success"] else 1


def cmd_crosscheck(args: argparse.Namespace) -> int:
    from operations.evaluation.crosscheck import crosscheck, feature_scorer

    rescore = None
    if args.rescore:
        from operations.evaluation.knn import load_feature_matrix

        paths = dataset_paths(args.dataset_dir, args.split)
        t_ids, t_feats, _ = load_feature_matrix(args.text_feats or paths.txt_feat, "text_id")
        i_ids, i_feats, _ = load_feature_matrix(args.image_feats or paths.img_feat, "image_id")
        rescore = feature_scorer(t_ids, t_feats, i_ids, i_feats)
    result = crosscheck(args.a, args.b, args.tie_eps, max_examples=args.examples, rescore=rescore)
    _print(result)
    if args.min_agreement is not None and (result["tie_aware_agreement"] or 0) < args.min_agreement:
        return 1
    return 0


def cmd_live_recall(args: argparse.Namespace) -> int:
    from operations.evaluation.live_recall import live_recall
    from operations.factory import build_image_store, build_vector_store

    settings = _settings(args)
    vectors, images = build_vector_store(settings), build_image_store(settings)
    try:
        result = live_recall(vectors, images, args.collection, args.sample, args.seed)
    finally:
        vectors.close()
        images.close()
    _print(result)
    if args.min_recall is not None and (result["recall@10"] or 0) < args.min_recall:
        return 1
    return 0


def cmd_reliability(args: argparse.Namespace) -> int:
    from operations.factory import build_calibrations
    from operations.relevance.calibrate import check_calibration, read_labelled_split
    from operations.relevance.calibration import format_reliability

    settings = _settings(args)
    state = build_calibrations(settings).get(settings.model_name)
    if state.calibration is None:
        sys.stderr.write(f"error: {state.reason}\n")
        return 2
    encoder = _encoder(args)
    data = read_labelled_split(encoder, args.dataset_dir, args.split)
    bins, ece = check_calibration(data, state.calibration)
    sys.stderr.write(f"reliability of {settings.model_name} on {args.dataset_dir.name}/{args.split}\n")
    sys.stderr.write(format_reliability(bins, ece) + "\n")
    _print(
        {
            "model": settings.model_name,
            "split": args.split,
            "calibration": state.calibration.to_json(),
            "expected_calibration_error": ece,
            "bins": [b.__dict__ for b in bins if b.pairs],
        }
    )
    return 0


# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m operations.evaluation.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-lmdb", help="build cn_clip's LMDB from tsv/jsonl")
    p.add_argument(
        "--dataset-dir", type=Path, default=DEFAULT_DATASET, help="default: <repo>/datasets/data/demo"
    )
    p.add_argument("--splits", default="valid", help="comma-separated splits (default: valid)")
    p.add_argument("--lmdb-dir", type=Path, default=None, help="default: <dataset-dir>/lmdb")
    p.set_defaults(func=cmd_build_lmdb)

    p = sub.add_parser("extract", help="extract image and/or text features")
    _dataset_args(p)
    _model_args(p)
    p.add_argument("--images", action="store_true", help="extract image features (default: both)")
    p.add_argument("--texts", action="store_true", help="extract text features (default: both)")
    p.add_argument(
        "--image-source",
        choices=("lmdb", "tsv"),
        default="lmdb",
        help="read images from lmdb/${split}/imgs (default) or ${split}_imgs.tsv",
    )
    p.add_argument("--image-data", type=Path, help="explicit LMDB dir or tsv file")
    p.add_argument("--text-data", type=Path, help="explicit texts jsonl")
    p.add_argument("--image-feat-output", type=Path, help="default ${split}_imgs.img_feat.jsonl")
    p.add_argument("--text-feat-output", type=Path, help="default ${split}_texts.txt_feat.jsonl")
    p.add_argument("--img-batch-size", type=int, default=64)
    p.add_argument("--text-batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="image decode threads (default 2)")
    p.add_argument(
        "--text-preprocess",
        choices=("cn_clip", "none"),
        default="cn_clip",
        help="cn_clip: eval's lower()+quote normalisation (default); none: as service queries",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("predict", help="top-k predictions: exact (default) or through the vector store")
    _dataset_args(p)
    p.add_argument("--image-feats", type=Path)
    p.add_argument("--text-feats", type=Path)
    p.add_argument(
        "--output",
        type=Path,
        help="default ${split}_predictions.jsonl (--via-store: ${split}_predictions.store.jsonl)",
    )
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--direction", choices=("t2i", "i2t"), default="t2i")
    p.add_argument("--query-chunk", type=int, default=1024, help="exact: queries per matrix product")
    p.add_argument("--index-chunk", type=int, default=8192, help="exact: index rows per matrix product")
    g = p.add_argument_group("vector store")
    g.add_argument("--via-store", action="store_true", help="answer through the vector store of Settings")
    g.add_argument("--milvus-uri", help="override MILVUS_URI (Lite file or http://host:port)")
    g.add_argument("--collection", help="collection name (default eval_<split>)")
    g.add_argument("--load", action="store_true", help="upsert the image features into the collection first")
    g.add_argument("--recreate", action="store_true", help="drop and re-create the collection, then load")
    g.add_argument("--store-model-name", help="model label stored on the collection (default MODEL_NAME)")
    g.add_argument("--index-type", choices=("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"), help="default INDEX_TYPE")
    g.add_argument("--index-params", help='JSON, e.g. {"nlist":128}')
    g.add_argument("--search-params", help='JSON, e.g. {"nprobe":16}')
    g.add_argument("--load-batch-size", type=int, default=1000)
    g.add_argument("--search-batch-size", type=int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Recall@1/5/10 as cn_clip's evaluation.py")
    _dataset_args(p)
    p.add_argument("--texts", type=Path, help="ground truth: ${split}_texts.jsonl")
    p.add_argument("--predictions", type=Path, help="default ${split}_predictions.jsonl")
    p.add_argument(
        "--direction",
        choices=("t2i", "i2t"),
        default="t2i",
        help="i2t: predictions {image_id, text_ids} (evaluation_tr.py)",
    )
    p.add_argument("--output", type=Path, help="also write the JSON here (cn_clip's output file)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("crosscheck", help="compare two prediction files")
    _dataset_args(p)
    p.add_argument("a", type=Path, help="reference predictions (e.g. exact)")
    p.add_argument("b", type=Path, help="predictions to check (e.g. via the store)")
    p.add_argument("--tie-eps", type=float, default=1e-6, help="scores closer than this are tied")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="recompute scores from the feature files instead of trusting the files' scores",
    )
    p.add_argument("--image-feats", type=Path)
    p.add_argument("--text-feats", type=Path)
    p.add_argument("--examples", type=int, default=5, help="disagreeing queries to show")
    p.add_argument("--min-agreement", type=float, help="exit 1 when tie-aware agreement is below this")
    p.set_defaults(func=cmd_crosscheck)

    p = sub.add_parser(
        "live-recall",
        help="recall@10 a live collection reaches on its own vectors (its index vs exact search)",
    )
    p.add_argument("--collection", required=True, help="a collection of the service (Settings' stores)")
    p.add_argument("--sample", type=int, default=200, help="vectors of the collection used as queries")
    p.add_argument("--seed", type=int, default=0, help="which vectors are sampled")
    p.add_argument("--min-recall", type=float, help="exit 1 when recall@10 is below this")
    p.set_defaults(func=cmd_live_recall)

    p = sub.add_parser(
        "reliability", help="reliability diagram of the model's calibration on a labelled split"
    )
    _dataset_args(p)
    _model_args(p)
    p.set_defaults(func=cmd_reliability)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from config.settings import SettingsError
    from operations.errors import ServiceError

    try:
        return args.func(args)
    except (SettingsError, ServiceError, FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
