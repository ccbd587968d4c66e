#!/usr/bin/env bash
# Top-k text->image predictions (${split}_predictions.jsonl): exact, by chunked matrix products; with --via-store the same through the vector store of Settings (MILVUS_URI, MILVUS_TOKEN, INDEX_TYPE ...), --load/--recreate first upserts the image features into --collection.
#
# Usage: scripts/make_topk_predictions.sh [--dataset-dir DIR] [--split valid] [--top-k 10] [--direction t2i|i2t] [--output F] [--via-store [--milvus-uri URI] [--collection NAME] [--load|--recreate] [--index-type FLAT]]
# Thin wrapper over: imgsearch eval predict [flags] (= python -m operations.evaluation.cli predict)
# --help lists every flag. Relative paths are relative to the current directory;
# the default dataset is <repo>/datasets/data/demo. Set PYTHON to choose the interpreter.
set -euo pipefail
exec "${PYTHON:-python3}" -m operations.evaluation.cli predict "$@"
