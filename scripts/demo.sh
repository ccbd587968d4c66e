#!/usr/bin/env bash
# The main job on the embedded default, fully offline:
#   set up -> generate the demo data if missing -> load it with the demo model into
#   Milvus Lite + SQLite -> serve the API, /docs and the web page on http://127.0.0.1:8000
# Re-running is cheap: what is already loaded is skipped.
#   SKIP_SETUP=1   skip scripts/setup.sh (packages already installed)
#   HOST, PORT     where to listen (default 127.0.0.1:8000)
#   DEMO_SPLITS    which splits to load (default "test")
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh </dev/null

# The demo's settings, unless the caller set them already.
while IFS='=' read -r key value; do
    case "$key" in ''|\#*) continue ;; esac
    [ -n "${!key:-}" ] || export "$key=$value"
done < config/demo.env

python3 -m datasets.demo_generator --out datasets/data/demo --if-missing
for split in ${DEMO_SPLITS:-test}; do
    echo "demo.sh: loading split $split into collection $DEFAULT_COLLECTION"
    python3 -m scripts.cli load --dataset datasets/data/demo --split "$split" --collection "$DEFAULT_COLLECTION" \
        > /dev/null
done
# Images with Chinese text, in a collection that reads it (OCR): search "13812345678" or "面馆" there.
if [ -d datasets/data/demo/text_images ]; then
    echo "demo.sh: adding the text images into collection shop (OCR on)"
    python3 -m scripts.cli add-folder shop datasets/data/demo/text_images --source demo --ocr > /dev/null
fi
echo "demo.sh: serving on http://${HOST:-127.0.0.1}:${PORT:-8000}/ (API docs at /docs); Ctrl-C stops"
exec python3 -m app.main --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
