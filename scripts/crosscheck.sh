#!/usr/bin/env bash
# Compare two prediction files: overlap@1/5/10, identical order, tie-aware agreement (equal scores in another order agree); --rescore recomputes scores from the feature files; --min-agreement X exits 1 below X.
# Or, with --collection C: the recall@10 a live collection reaches on its own vectors (a sample of them searched through
# its index, against the exact top 10 over every vector of C); --min-recall X exits 1 below X.
#
# Usage: scripts/crosscheck.sh A.jsonl B.jsonl [--rescore [--dataset-dir DIR --split valid]] [--tie-eps 1e-6] [--min-agreement 1.0]
#        scripts/crosscheck.sh --collection C [--sample 200] [--seed 0] [--min-recall 0.99]   (stores of the Settings / .env)
# Thin wrapper over: imgsearch eval crosscheck [flags] / imgsearch eval live-recall [flags]
# (= python -m operations.evaluation.cli ...). --help lists every flag. Relative paths are relative to the current
# directory; the default dataset is <repo>/datasets/data/demo. Set PYTHON to choose the interpreter.
set -euo pipefail
for arg in "$@"; do
    if [[ "$arg" == "--collection" || "$arg" == --collection=* ]]; then
        exec "${PYTHON:-python3}" -m operations.evaluation.cli live-recall "$@"
    fi
done
exec "${PYTHON:-python3}" -m operations.evaluation.cli crosscheck "$@"
