#!/usr/bin/env bash
# Create .venv for this machine kind (Python 3.11, CPU torch 2.13.0) with the Megatron stack.
# Idempotent: `make setup` runs it only when this script or the lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
# TORCH_VERSION, MEGATRON_CORE_VERSION, MEGATRON_BRIDGE_VERSION: pinned in kit/versions.py
eval "$("$PY" kit/versions.py --shell)"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# 1. torch first, the CPU build (pip takes the wheel that lies on this machine's disk).
"${PIP[@]}" "torch==${TORCH_VERSION}"
# 2. The Megatron wheels without their dependency lists: they declare Python >= 3.12 and would
#    pull a CUDA torch and ~20 CUDA wheels. megatron_cpu/compat.py covers the one 3.12-only name.
"${PIP[@]}" --no-deps --ignore-requires-python "megatron-core==${MEGATRON_CORE_VERSION}" "megatron-bridge==${MEGATRON_BRIDGE_VERSION}"
# 3. Everything else at exact versions, with no resolution.
"${PIP[@]}" --no-deps -r requirements/lock.txt
# 4. The kit itself (editable), so `python -m recipes` works from anywhere in the checkout.
"${PIP[@]}" --no-deps --no-build-isolation -e .
# 5. The offline tokenizer (o200k_harmony from the bpe-openai wheel; HF tokenizer.json built once).
.venv/bin/python -m gptoss.tokenizer
.venv/bin/python - <<'PY'
import importlib.metadata as m
for p in ("torch", "megatron-core", "megatron-bridge", "transformers", "nemo-run", "wandb", "tiktoken"):
    print(f"  {p:<16} {m.version(p)}")
PY
