#!/usr/bin/env bash
# Create the kit's venv with the Megatron stack (VENV, default .venv: what CONTAINER_IMAGE=none jobs
# activate, slurm/defaults.env).
#   bash scripts/setup.sh [VENV]                 this machine kind: Python 3.11, CPU torch (make setup)
#   bash scripts/setup.sh --cuda [VENV]          a GPU cluster without containers: Python 3.12, PyPI's
#                                                CUDA 13 torch, Transformer Engine built here (make setup-gpu)
#   bash scripts/setup.sh --cuda --check [VENV]  only what --cuda checks first: seconds, installs nothing
# Pins: torch and Megatron in kit/versions.py, the rest in requirements/lock.txt (and, for --cuda,
# requirements/gpu.txt), installed without resolution. Idempotent: `make setup` runs it only when this
# script or the lock file changed; --cuda skips what the venv already has.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA=0 CHECK_ONLY=0 VENV=.venv
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    --check) CHECK_ONLY=1 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg: usage: bash scripts/setup.sh [--cuda [--check]] [VENV]" >&2; exit 2 ;;
    *) VENV=$arg ;;
  esac
done
GPU_REQ=requirements/gpu.txt
# The CUDA major of the --cuda stack: the NN of transformer-engine-cuNN in requirements/gpu.txt.
CUDA_MAJOR=$(sed -nE 's/^transformer-engine-cu([0-9]+)==.*/\1/p' "$GPU_REQ")
TE_TORCH=$(sed -nE 's/^(transformer-engine-torch==[^ #]+).*/\1/p' "$GPU_REQ")

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown; }

# Everything --cuda needs from the node, checked before anything is installed: each missing piece is
# one line naming it and how to provide it, then exit 2. Sets CUDA_ROOT (exported as CUDA_HOME for
# the build, so that Transformer Engine and torch agree on the toolkit).
check_cuda() {
  local problems=() pyver top nvcc nvcc_on_path from cuda_version cxx=${CXX:-c++} cudnn_from driver
  # Python 3.12: megatron-bridge 0.6.2 requires >=3.12,<3.13.
  if ! command -v "$PY" >/dev/null 2>&1; then
    problems+=("$PY not found: the CUDA venv needs Python 3.12 (megatron-bridge requires >=3.12,<3.13): module load python/3.12, or set PYTHON=/path/to/python3.12")
  elif ! pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    problems+=("$PY does not run here: set PYTHON=/path/to/python3.12 (module load python/3.12)")
  elif [ "$pyver" != 3.12 ]; then
    problems+=("$PY is Python $pyver; the CUDA venv needs 3.12 (megatron-bridge requires >=3.12,<3.13): set PYTHON=/path/to/python3.12")
  elif ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    problems+=("$PY cannot create venvs (no venv/ensurepip module): install python3.12-venv, or set PYTHON to another Python 3.12")
  fi
  if [ -x "$VENV/bin/python" ] && [ "$(py_version "$VENV/bin/python")" != 3.12 ]; then
    problems+=("$VENV is a Python $(py_version "$VENV/bin/python") venv (the CPU one of make setup?): move it away, or give --cuda another path (make setup-gpu KIT_VENV=DIR)")
  fi
  # The CUDA toolkit, found as Transformer Engine's build finds it: CUDA_HOME, else nvcc on PATH
  # (a module's nvcc may be a wrapper script: nvcc itself says where its toolkit is), else /usr/local/cuda.
  if [ -n "${CUDA_HOME:-}" ]; then
    CUDA_ROOT=$CUDA_HOME from="CUDA_HOME=$CUDA_HOME"
  elif nvcc_on_path=$(command -v nvcc); then
    top=$("$nvcc_on_path" -dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1) || true
    CUDA_ROOT=$(cd "${top:-$(dirname "$nvcc_on_path")/..}" 2>/dev/null && pwd -P) || CUDA_ROOT=$(dirname "$nvcc_on_path")/..
    from="nvcc on PATH: $nvcc_on_path"
  else
    CUDA_ROOT=/usr/local/cuda from="no CUDA_HOME, no nvcc on PATH"
  fi
  nvcc=$CUDA_ROOT/bin/nvcc
  if [ ! -x "$nvcc" ]; then
    problems+=("nvcc not found at $nvcc ($from): building transformer-engine-torch needs the CUDA $CUDA_MAJOR toolkit: module load cuda/$CUDA_MAJOR.x, or set CUDA_HOME to its root")
  else
    cuda_version=$("$nvcc" --version 2>/dev/null | sed -nE 's/.*release ([0-9]+\.[0-9]+).*/\1/p' | head -1) || true
    if [ "${cuda_version%%.*}" != "$CUDA_MAJOR" ]; then
      problems+=("nvcc at $nvcc is CUDA ${cuda_version:-unknown}; requirements/gpu.txt is the CUDA $CUDA_MAJOR stack (PyPI's torch wheel): module load cuda/$CUDA_MAJOR.x, or set CUDA_HOME to a CUDA $CUDA_MAJOR toolkit")
    elif [ ! -f "$CUDA_ROOT/include/cuda_runtime_api.h" ]; then
      problems+=("no CUDA headers in $CUDA_ROOT/include (nvcc at $nvcc): set CUDA_HOME to the toolkit's root")
    fi
  fi
  command -v "$cxx" >/dev/null 2>&1 ||
    problems+=("no C++ compiler ($cxx) on PATH: building transformer-engine-torch needs one: module load gcc, or set CXX")
  # cudnn.h: CUDNN_PATH when set, else the toolkit's, else the nvidia-cudnn-cuNN wheel that torch
  # requires ships it (nvidia/cudnn/include/cudnn.h, the cuDNN torch runs with): installed below.
  if [ -n "${CUDNN_PATH:-}" ]; then
    cudnn_from="CUDNN_PATH=$CUDNN_PATH"
    [ -f "$CUDNN_PATH/include/cudnn.h" ] ||
      problems+=("no include/cudnn.h under CUDNN_PATH=$CUDNN_PATH: point it at a cuDNN 9 root (module load cudnn), or unset it to use torch's nvidia-cudnn-cu$CUDA_MAJOR wheel")
  elif [ -f "$CUDA_ROOT/include/cudnn.h" ]; then
    cudnn_from="$CUDA_ROOT/include"
  else
    cudnn_from="torch's nvidia-cudnn-cu$CUDA_MAJOR wheel"
  fi
  if [ ${#problems[@]} -gt 0 ]; then
    printf 'error: %s\n' "${problems[@]}" >&2
    exit 2
  fi
  # The driver matters only where the jobs run (the build needs no GPU): a warning, where there is one.
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1) || true
  if [ -n "$driver" ] && [ "${driver%%.*}" -lt 580 ] 2>/dev/null; then
    echo "warning: NVIDIA driver $driver here; CUDA $CUDA_MAJOR wheels need >= 580 on the nodes that run the jobs" >&2
  fi
  echo "checks passed: Python 3.12 ($PY), CUDA $cuda_version ($nvcc), C++ $cxx, cuDNN headers from $cudnn_from; venv $VENV"
}

PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# The CPU venv of this machine kind (make setup).
setup_cpu() {
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # 1. torch first, the CPU build (pip takes the wheel that lies on this machine's disk).
  "${PIP[@]}" "torch==${TORCH_VERSION}"
  # 2. The Megatron wheels without their dependency lists: they declare Python >= 3.12 and would
  #    pull a CUDA torch and ~20 CUDA wheels. megatron_cpu/compat.py covers the one 3.12-only name.
  "${PIP[@]}" --no-deps --ignore-requires-python "megatron-core==${MEGATRON_CORE_VERSION}" "megatron-bridge==${MEGATRON_BRIDGE_VERSION}"
  # 3. Everything else at exact versions, with no resolution.
  "${PIP[@]}" --no-deps -r requirements/lock.txt
  finish
}

# The CUDA venv of a GPU cluster (make setup-gpu), after check_cuda.
setup_cuda() {
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  touch "$VENV/.kit-cuda"  # the CPU setup refuses this venv
  local site inc="" d cudnn=""
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  # A torch of another build (2.13.0+cpu) satisfies torch==2.13.0 for pip: take it out first.
  if "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit("+" not in m.version("torch"))' 2>/dev/null; then
    "$VENV/bin/python" -m pip uninstall --quiet -y torch
  fi
  # 1. torch (PyPI's Linux wheel is the CUDA build), the CUDA wheels at its exact pins, Transformer
  #    Engine's Python and core wheels: requirements/gpu.txt, all binary, no resolution.
  grep -v '^transformer-engine-torch==' "$GPU_REQ" >"$TMP/gpu-wheels.txt"
  "${PIP[@]}" --no-deps --only-binary=:all: "torch==${TORCH_VERSION}" -r "$TMP/gpu-wheels.txt"
  # 2. The Megatron wheels without their dependency lists (as in the CPU venv: the kit installs what it uses).
  "${PIP[@]}" --no-deps "megatron-core==${MEGATRON_CORE_VERSION}" "megatron-bridge==${MEGATRON_BRIDGE_VERSION}"
  # 3. The lock, less the names requirements/gpu.txt pins itself (triton: torch's CUDA build pins its own).
  "$VENV/bin/python" - requirements/lock.txt "$GPU_REQ" >"$TMP/lock.txt" <<'PY'
import re, sys
def name(line):
    m = re.match(r"([A-Za-z0-9._-]+)==", line)
    return m and re.sub(r"[-_.]+", "-", m.group(1)).lower()
gpu = {name(line) for line in open(sys.argv[2])} - {None}
sys.stdout.writelines(line for line in open(sys.argv[1]) if name(line) not in gpu)
PY
  "${PIP[@]}" --no-deps -r "$TMP/lock.txt"
  # 4. transformer-engine-torch (an sdist on PyPI), compiled against this venv's torch and the
  #    checked toolkit, without build isolation (its build imports torch). Headers the toolkit may
  #    lack (cuDNN, NCCL) come from torch's own nvidia-* wheels, after CUDNN_PATH's.
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for d in ${CUDNN_PATH:+"$CUDNN_PATH/include"} "$CUDA_ROOT/include" "$site/nvidia/cudnn/include"; do
    [ -n "$cudnn" ] || [ ! -f "$d/cudnn.h" ] || cudnn=$d
  done
  if [ -z "$cudnn" ]; then
    echo "error: no cudnn.h in $CUDA_ROOT/include nor in torch's nvidia-cudnn-cu$CUDA_MAJOR wheel ($site/nvidia/cudnn): set CUDNN_PATH to a cuDNN 9 root (module load cudnn)" >&2
    exit 2
  fi
  [ -z "${CUDNN_PATH:-}" ] || inc=$CUDNN_PATH/include
  for d in "$site"/nvidia/*/include; do
    [ ! -d "$d" ] || inc=${inc:+$inc:}$d
  done
  local jobs=${MAX_JOBS:-$(nproc)}
  [ "$jobs" -le 8 ] || [ -n "${MAX_JOBS:-}" ] || jobs=8  # each compiler takes GBs: set MAX_JOBS for more
  echo "building $TE_TORCH against torch ${TORCH_VERSION} and CUDA in $CUDA_ROOT ($jobs jobs; can take half an hour)"
  CUDA_HOME=$CUDA_ROOT CPLUS_INCLUDE_PATH="$inc${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}" PATH="$VENV/bin:$PATH" \
    NVTE_PYTORCH_FORCE_BUILD=TRUE MAX_JOBS=$jobs \
    "${PIP[@]}" --no-deps --no-build-isolation --no-binary transformer-engine-torch "$TE_TORCH"
  finish
}

# Both kinds end alike: the kit itself (editable), so `python -m recipes` works from anywhere in the
# checkout; the offline tokenizer (o200k_harmony from the bpe-openai wheel; HF tokenizer.json built once).
finish() {
  "${PIP[@]}" --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -m gptoss.tokenizer
  "$VENV/bin/python" - "$CUDA" "$CUDA_MAJOR" <<'PY'
import importlib.metadata as m, sys
cuda, major = sys.argv[1] == "1", sys.argv[2]
names = ("torch", "megatron-core", "megatron-bridge", "transformers", "nemo-run", "wandb", "tiktoken")
for p in names + (("transformer-engine", "transformer-engine-torch") if cuda else ()):
    print(f"  {p:<24} {m.version(p)}")
if cuda:
    import torch
    print(f"  {'CUDA (torch built with)':<24} {torch.version.cuda}")
    if not (torch.version.cuda or "").startswith(major + "."):
        sys.exit(f"error: torch {torch.__version__} in this venv is not a CUDA {major} build: is a pip index or find-links on this machine serving another torch? (pip config list)")
PY
}

if [ "$CUDA" = 1 ]; then
  PY=${PYTHON:-python3.12}
  [ -n "${PYTHON:-}" ] || command -v "$PY" >/dev/null || PY=python3
  check_cuda
  [ "$CHECK_ONLY" = 0 ] || exit 0
else
  if [ "$CHECK_ONLY" = 1 ]; then
    echo "error: --check goes with --cuda: bash scripts/setup.sh --cuda --check" >&2
    exit 2
  fi
  if [ -f "$VENV/.kit-cuda" ]; then
    echo "error: $VENV is the CUDA venv of make setup-gpu: build the CPU one elsewhere (bash scripts/setup.sh DIR) or move it away" >&2
    exit 2
  fi
  PY=${PYTHON:-python3.11}
  command -v "$PY" >/dev/null || PY=python3
fi
# TORCH_VERSION, MEGATRON_CORE_VERSION, MEGATRON_BRIDGE_VERSION: pinned in kit/versions.py
eval "$("$PY" kit/versions.py --shell)"
if [ "$CUDA" = 1 ]; then setup_cuda; else setup_cpu; fi
