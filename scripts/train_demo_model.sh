#!/usr/bin/env bash
# Train the demo Chinese-CLIP model from scratch on CPU (deterministic).
#   bash scripts/train_demo_model.sh [extra args for python3 -m scripts.train_demo_model]
# Generates the demo dataset first if any of its files are missing, then writes
# models/demo/demo-tiny.pt and checks it through the service's encoder.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DEMO_DATA:-datasets/data/demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

python3 -m datasets.demo_generator --out "$DATA" --if-missing
python3 -m scripts.train_demo_model --data "$DATA" "$@"
python3 -m scripts.check_demo_model --data "$DATA" --split valid
