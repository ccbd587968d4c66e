#!/usr/bin/env bash
# Idempotent setup of a fresh Debian machine for this service and its tests:
#   - system packages: mariadb-server (tests run a private mariadbd), chromium + chromium-driver
#     (browser tests), installed only when missing;
#   - Python packages from requirements.txt (the pinned lock, dev tools included; torch/torchvision
#     come from local disk here), then this project itself as an editable package (`pip install
#     --no-deps -e .`: the `imgsearch` command, and imports that work from any directory).
# Runs as root, or through sudo when not root. Quiet unless something fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
log="$(mktemp -t setup-XXXXXX.log)"
trap 'rm -f "$log"' EXIT

# Run a command with its output in $log; on failure show the end of it and stop.
quiet() {
    if ! "$@" >"$log" 2>&1; then
        echo "setup.sh: failed: $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "setup.sh: not root and no sudo: cannot install system packages" >&2
        exit 1
    fi
fi

missing=()
{ have mariadbd && have mariadb-install-db; } || missing+=(mariadb-server)
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
# A CJK font, so that the page's Chinese is readable in browser-test screenshots and the OCR tests
# and demo can render Chinese text into images.
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing+=(fonts-wqy-microhei)
# OpenCV (pulled in by rapidocr-onnxruntime, the OCR) links libGL and glib.
dpkg -s libgl1 >/dev/null 2>&1 || missing+=(libgl1)
dpkg -s libglib2.0-0 >/dev/null 2>&1 || dpkg -s libglib2.0-0t64 >/dev/null 2>&1 || missing+=(libglib2.0-0)

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    # Tests start their own mariadbd: keep apt from starting the system one (exit 101 = "no").
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        quiet "${SUDO[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    status=0
    ( quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
      && quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ) \
      || status=$?
    if [ -n "$added_policy" ]; then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    fi
    [ "$status" -eq 0 ] || exit "$status"
    for tool in mariadbd mariadb-install-db chromium chromedriver; do
        have "$tool" || { echo "setup.sh: $tool still missing after apt-get install" >&2; exit 1; }
    done
fi

echo "setup.sh: installing Python packages (requirements.txt) with $("$PYTHON" --version 2>&1)"
PIP_ROOT_USER_ACTION=ignore quiet "$PYTHON" -m pip install -q -r requirements.txt
# --no-deps: the lock above already holds every dependency, at the versions CI tests.
PIP_ROOT_USER_ACTION=ignore quiet "$PYTHON" -m pip install -q --no-deps -e .
echo "setup.sh: done"
