#!/usr/bin/env bash
# The whole GPU check on a bare GPU host (bench/device_host.txt: Python 3.12, its own PyTorch, no
# Megatron, no Transformer Engine, no network), from the repo root, with build/device-bundle
# (bash bench/device_bundle.sh) carried along; every result under $OUT. With the device tool:
#   run(command="bash bench/device_check.sh", carry=["build/device-bundle"], timeout_s=540)
# Sized for under 7 minutes on one H100 (a 2-layer 20b), so that it can run twice in the budget.
set -uo pipefail
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
B=build/device-bundle
T=/tmp/kit-site
PY=$(command -v python3)
[[ -f $B/o200k_base.tiktoken.gz ]] || { echo "no $B here: run bash bench/device_bundle.sh and carry $B" >&2; exit 2; }
{ date -u; nvidia-smi; "$PY" -m pip list; } > "$OUT/host.txt" 2>&1  # the host's packages: record new versions in bench/device_host.txt
t0=$(date +%s)
"$PY" -m pip install --quiet --no-index --no-deps --target "$T" "$B"/*.whl > "$OUT/install.log" 2>&1 || { tail "$OUT/install.log"; exit 3; }
echo "bundle installed in $(( $(date +%s) - t0 )) s"
export PYTHONPATH="$T:$PWD" GPTOSS_KIT_O200K="$PWD/$B/o200k_base.tiktoken.gz" GPTOSS_KIT_CACHE=/tmp/kit-cache
gpu=$("$PY" -c "import torch; print('h200' if 'H200' in torch.cuda.get_device_name() else 'h100')")
timeout 450 "$PY" bench/gpu_check.py --layers "${LAYERS:-2}" --gpu "$gpu" --work /tmp/gpu-check --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
for f in /tmp/gpu-check/*.log; do cp "$f" "$OUT/" 2>/dev/null; done
echo "gpu check: rc $rc after $(( $(date +%s) - t0 )) s; results in $OUT"
exit "$rc"
