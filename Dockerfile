# The service's image: CPU by default, one uvicorn process, run as a non-root user.
#
#   docker build -t imgsearch:0.1.0 .                                  # CPU (torch's CPU wheels)
#   docker build -t imgsearch:0.1.0-cuda --build-arg TORCH_VARIANT=cuda .   # GPU: see README, "Production"
#
# Nothing is downloaded when the container starts: model weights and calibrations are mounted
# at /app/models (read-only), the ONNX export cache, calibrations written by the API and the
# SQLite / Milvus Lite files live on the writable /var/lib/imgsearch, datasets and upload spools
# under /data (DATA_ROOT; a bulk add spools there, so it must be writable).
# compose.yaml and deploy/k8s/ mount them; tests/unit/test_deploy_files.py checks this file.

# A full version and Debian release, never a floating tag: a rebuild gets the same Python.
FROM python:3.11.11-slim-bookworm

# cpu: torch's CPU-only wheels (a fraction of the CUDA build's size); cuda: the default index's
# Linux wheels, which carry the CUDA runtime (the host needs the NVIDIA driver and container toolkit).
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# OpenCV (pulled in by rapidocr-onnxruntime, the OCR) links libGL and glib (as scripts/setup.sh
# installs them). Debian's versions follow the pinned base image, so they are not pinned again.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first (their layer is rebuilt only when the lock changes).
COPY requirements.txt pyproject.toml ./
# The runtime packages of pyproject.toml, each at the version requirements.txt pins (the lock CI
# tests); the lock's dev tools and the Milvus 2.3 test server binary stay out of the image. A
# constraints file takes no extras, so they are stripped from its copy. The torch pins come from
# the lock through variables, which the linter cannot see:
# hadolint ignore=DL3013
RUN set -eu; \
    sed -e 's/\[[^]]*\]//' requirements.txt > /tmp/constraints.txt; \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/runtime.txt; \
    torch_pin="$(grep -E '^torch==' requirements.txt)"; \
    vision_pin="$(grep -E '^torchvision==' requirements.txt)"; \
    if [ "$TORCH_VARIANT" = "cpu" ]; then \
        pip install --index-url "$TORCH_CPU_INDEX" "$torch_pin" "$vision_pin"; \
    else \
        pip install "$torch_pin" "$vision_pin"; \
    fi; \
    pip install -r /tmp/runtime.txt -c /tmp/constraints.txt; \
    rm /tmp/constraints.txt /tmp/runtime.txt

# The project itself (what .dockerignore lets through: code, config, no tests, data or weights),
# installed as scripts/setup.sh installs it; the user below can read it but not change it.
COPY . .
RUN pip install --no-deps -e .

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/imgsearch imgsearch \
    && mkdir -p /var/lib/imgsearch/onnx /var/lib/imgsearch/calibration /data \
    && chown -R imgsearch:imgsearch /var/lib/imgsearch /data

# Paths inside the container; everything else comes from the environment (config/settings.py).
ENV ONNX_CACHE_DIR=/var/lib/imgsearch/onnx \
    CALIBRATION_DIR=/var/lib/imgsearch/calibration \
    SQLITE_PATH=/var/lib/imgsearch/images.sqlite3 \
    MILVUS_URI=/var/lib/imgsearch/milvus.db \
    DATA_ROOT=/data

# Numeric, so that Kubernetes can check runAsNonRoot against the image.
USER 10001:10001
EXPOSE 8000

# /healthz: the process is up (answered by the event loop). Orchestrators that route traffic
# probe /readyz instead (compose.yaml, deploy/k8s/deployment.yaml). The model loads before the
# server listens, hence the start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["python", "-m", "app.main", "--host", "0.0.0.0", "--port", "8000"]
