#!/usr/bin/env bash
# Build Chinese-CLIP's LMDB (lmdb/${split}/imgs and pairs) from ${split}_imgs.tsv and ${split}_texts.jsonl, byte-compatible with cn_clip's build_lmdb_dataset.py; bad lines are reported and skipped.
#
# Usage: scripts/build_lmdb.sh [--dataset-dir DIR] [--splits valid,test] [--lmdb-dir DIR]
# Thin wrapper over: imgsearch eval build-lmdb [flags] (= python -m operations.evaluation.cli build-lmdb)
# --help lists every flag. Relative paths are relative to the current directory;
# the default dataset is <repo>/datasets/data/demo. Set PYTHON to choose the interpreter.
set -euo pipefail
exec "${PYTHON:-python3}" -m operations.evaluation.cli build-lmdb "$@"
