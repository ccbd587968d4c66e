#!/usr/bin/env bash
# Recall@1/5/10 and their mean, exactly as Chinese-CLIP's eval/evaluation.py (same checks, same JSON); exit 1 when the predictions are rejected.
#
# Usage: scripts/evaluate.sh [--dataset-dir DIR] [--split valid] [--texts F] [--predictions F] [--direction t2i|i2t] [--output result.json]
# Thin wrapper over: imgsearch eval evaluate [flags] (= python -m operations.evaluation.cli evaluate)
# --help lists every flag. Relative paths are relative to the current directory;
# the default dataset is <repo>/datasets/data/demo. Set PYTHON to choose the interpreter.
set -euo pipefail
exec "${PYTHON:-python3}" -m operations.evaluation.cli evaluate "$@"
