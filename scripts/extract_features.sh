#!/usr/bin/env bash
# Extract L2-normalised image and text features (${split}_imgs.img_feat.jsonl, ${split}_texts.txt_feat.jsonl) with the model and encoder backend of Settings (env MODEL_NAME, MODEL_CHECKPOINT, MODEL_ARCH, DEVICE, HALF_PRECISION, ENCODER_BACKEND, TEXT_INT8) or flags.
#
# Usage: scripts/extract_features.sh [--dataset-dir DIR] [--split valid] [--images] [--texts] [--image-source lmdb|tsv] [--img-batch-size 64] [--workers 2] [--model-name N --checkpoint F --arch A --device cpu|cuda --half] [--encoder-backend auto|onnx|torch] [--text-int8]
# Thin wrapper over: imgsearch eval extract [flags] (= python -m operations.evaluation.cli extract)
# --help lists every flag. Relative paths are relative to the current directory;
# the default dataset is <repo>/datasets/data/demo. Set PYTHON to choose the interpreter.
set -euo pipefail
exec "${PYTHON:-python3}" -m operations.evaluation.cli extract "$@"
