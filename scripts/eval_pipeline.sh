#!/usr/bin/env bash
# The whole evaluation chain on one split, Chinese-CLIP style, printing JSON:
#   build LMDB -> extract features -> exact top-10 predictions -> Recall@1/5/10
#   (text->image, and image->text) -> the reliability diagram of the model's relevance
#   calibration (use --split test for the held-out one) -> the same text->image predictions through
#   Milvus (FLAT) -> cross-check exact vs Milvus (and the recall of the Milvus
#   predictions). Results: <work-dir>/<split>_eval/*.json, and all of them on stdout.
#
# Usage: scripts/eval_pipeline.sh [--dataset-dir DIR] [--split valid] [--work-dir DIR]
#                                 [--image-source lmdb|tsv] [--milvus-uri URI]
#                                 [--collection NAME] [--index-type FLAT] [--skip-store]
#
#   --dataset-dir   dataset with ${split}_imgs.tsv and ${split}_texts.jsonl
#                   (default <repo>/datasets/data/demo; the LMDB is built there)
#   --split         split to evaluate (default valid)
#   --work-dir      where features, predictions and results go (default: the dataset dir,
#                   with Chinese-CLIP's file names)
#   --image-source  read images for extraction from the LMDB (default) or the tsv
#   --milvus-uri    vector store for the store predictions (default: a Milvus Lite file
#                   <work-dir>/eval_milvus.db of its own, so it never contends with a
#                   running server's Lite file; give http://host:port for a server)
#   --collection    collection for the store predictions (default eval_<split>; re-created)
#   --index-type    FLAT (default; must agree 100% with exact), IVF_FLAT or HNSW
#   --skip-store    stop after the exact evaluation
#
# Model: env MODEL_NAME / MODEL_CHECKPOINT / MODEL_ARCH (defaults: the demo model
# demo-tiny, models/demo/demo-tiny.pt, config/model_configs/demo-tiny.json), DEVICE.
# Exit status: non-zero when a step fails or exact and FLAT predictions disagree.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

DATASET="$REPO/datasets/data/demo"
SPLIT="valid"
WORK=""
IMAGE_SOURCE="lmdb"
MILVUS=""
COLLECTION=""
INDEX_TYPE="FLAT"
SKIP_STORE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dataset-dir) DATASET="$2"; shift 2 ;;
    --split) SPLIT="$2"; shift 2 ;;
    --work-dir) WORK="$2"; shift 2 ;;
    --image-source) IMAGE_SOURCE="$2"; shift 2 ;;
    --milvus-uri) MILVUS="$2"; shift 2 ;;
    --collection) COLLECTION="$2"; shift 2 ;;
    --index-type) INDEX_TYPE="$2"; shift 2 ;;
    --skip-store) SKIP_STORE=1; shift ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
WORK="${WORK:-$DATASET}"
MILVUS="${MILVUS:-$WORK/eval_milvus.db}"
COLLECTION="${COLLECTION:-eval_${SPLIT//[^A-Za-z0-9_]/_}}"
export MODEL_NAME="${MODEL_NAME:-demo-tiny}"
export MODEL_CHECKPOINT="${MODEL_CHECKPOINT:-$REPO/models/demo/demo-tiny.pt}"
export MODEL_ARCH="${MODEL_ARCH:-$REPO/config/model_configs/demo-tiny.json}"

if [[ "$DATASET" == "$REPO/datasets/data/demo" ]]; then
  "$PY" -m datasets.demo_generator --out "$DATASET" --if-missing >&2  # the offline demo: make it if missing
fi
if [[ ! -f "$DATASET/${SPLIT}_imgs.tsv" || ! -f "$DATASET/${SPLIT}_texts.jsonl" ]]; then
  echo "no $DATASET/${SPLIT}_imgs.tsv or ${SPLIT}_texts.jsonl; for the demo data run:" >&2
  echo "  imgsearch demo-data --out $DATASET" >&2
  exit 2
fi
mkdir -p "$WORK"
IMG_FEAT="$WORK/${SPLIT}_imgs.img_feat.jsonl"
TXT_FEAT="$WORK/${SPLIT}_texts.txt_feat.jsonl"
PRED="$WORK/${SPLIT}_predictions.jsonl"
PRED_STORE="$WORK/${SPLIT}_predictions.store.jsonl"
RES="$WORK/${SPLIT}_eval"
mkdir -p "$RES"
rm -f "$RES"/*.json
cli() { "$PY" -m operations.evaluation.cli "$@"; }
step() { echo "== $1" >&2; }

step "build LMDB ($DATASET/lmdb/$SPLIT)"
cli build-lmdb --dataset-dir "$DATASET" --splits "$SPLIT" > "$RES/lmdb.json"

step "extract features ($MODEL_NAME)"
cli extract --dataset-dir "$DATASET" --split "$SPLIT" --image-source "$IMAGE_SOURCE" \
  --image-feat-output "$IMG_FEAT" --text-feat-output "$TXT_FEAT" > "$RES/extract.json"

step "exact top-10 predictions"
cli predict --image-feats "$IMG_FEAT" --text-feats "$TXT_FEAT" --output "$PRED" --quiet > "$RES/predict.json"

step "evaluate exact predictions"
cli evaluate --dataset-dir "$DATASET" --split "$SPLIT" --predictions "$PRED" > "$RES/recall.json"

step "relevance: reliability of the model's calibration on this split (predicted vs observed per bin)"
cli reliability --dataset-dir "$DATASET" --split "$SPLIT" > "$RES/reliability.json" \
  || { echo "(model not calibrated: no reliability diagram; see imgsearch calibrate)" >&2; rm -f "$RES/reliability.json"; }

step "image->text: exact predictions and recall (as cn_clip's *_tr.py; needs >= 10 texts)"
cli predict --direction i2t --image-feats "$IMG_FEAT" --text-feats "$TXT_FEAT" \
  --output "$WORK/${SPLIT}_predictions.tr.jsonl" --quiet > /dev/null
cli evaluate --dataset-dir "$DATASET" --split "$SPLIT" --direction i2t \
  --predictions "$WORK/${SPLIT}_predictions.tr.jsonl" > "$RES/recall_i2t.json" || true

if [[ $SKIP_STORE -eq 0 ]]; then
  step "predictions through the vector store ($MILVUS, $INDEX_TYPE)"
  cli predict --via-store --milvus-uri "$MILVUS" --collection "$COLLECTION" --recreate \
    --index-type "$INDEX_TYPE" --store-model-name "$MODEL_NAME" \
    --image-feats "$IMG_FEAT" --text-feats "$TXT_FEAT" --output "$PRED_STORE" --quiet > "$RES/store.json"

  step "evaluate store predictions"
  cli evaluate --dataset-dir "$DATASET" --split "$SPLIT" --predictions "$PRED_STORE" > "$RES/recall_store.json" || true

  step "cross-check exact vs store"
  MIN=()
  [[ "$INDEX_TYPE" == "FLAT" ]] && MIN=(--min-agreement 1.0)
  set +e
  cli crosscheck --rescore --image-feats "$IMG_FEAT" --text-feats "$TXT_FEAT" "${MIN[@]}" \
    "$PRED" "$PRED_STORE" > "$RES/crosscheck.json"
  XC=$?
  set -e
else
  XC=0
fi

"$PY" - "$RES" <<'EOF'
import json, pathlib, sys
res = pathlib.Path(sys.argv[1])
out = {p.stem: json.loads(p.read_text()) for p in sorted(res.glob("*.json"))}
print(json.dumps(out, ensure_ascii=False, indent=2))
EOF
if [[ $XC -ne 0 ]]; then
  echo "exact and $INDEX_TYPE predictions disagree (see crosscheck above)" >&2
  exit 1
fi
