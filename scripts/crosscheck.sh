#!/usr/bin/env bash
# Compare two prediction files: overlap@1/5/10, identical order, tie-aware agreement (equal scores in another order agree); --rescore recomputes scores from the feature files; --min-agreement X exits 1 below X.
#
# Usage: scripts/crosscheck.sh A.jsonl B.jsonl [--rescore [--dataset-dir DIR --split valid]] [--tie-eps 1e-6] [--min-agreement 1.0]
# Thin wrapper over: imgsearch eval crosscheck [flags] (= python -m operations.evaluation.cli crosscheck)
# --help lists every flag. Relative paths are relative to the current directory;
# the default dataset is <repo>/datasets/data/demo. Set PYTHON to choose the interpreter.
set -euo pipefail
exec "${PYTHON:-python3}" -m operations.evaluation.cli crosscheck "$@"
