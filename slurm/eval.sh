#!/usr/bin/env bash
#SBATCH --job-name=eval
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
# Code evaluation with vLLM as the generator, in one job on one node:
#   sbatch slurm/eval.sh MODEL_DIR [eval code options...]
#   sbatch --gpus-per-node 8 slurm/eval.sh $WORKSPACE/models/gpt-oss-120b/hf --problems humaneval --n 20 --k 1,10
# 1. starts an OpenAI-compatible vLLM server for MODEL_DIR (an HF directory: gpt-oss or any other
#    causal LM) on this node, bound to 127.0.0.1, tensor parallel over the node's GPUs, from
#    VLLM_IMAGE (pyxis) or, with VLLM_IMAGE=none, the venv VLLM_VENV (defaults: slurm/defaults.env);
# 2. waits until it serves (VLLM_START_TIMEOUT seconds, default 1800), failing with its log's tail
#    when it dies or never comes up;
# 3. runs `python -m inference eval code --endpoint URL --model NAME ...` in the kit's environment;
# 4. stops the server. Its log stays with the job's logs: $WORKSPACE/logs/eval-<jobid>/vllm.log.
# Exit status: the evaluation's (2: bad input; 3: the server did not start).
# VLLM_ARGS adds server flags (e.g. "--max-model-len 8192 --gpu-memory-utilization 0.85").
# Outside SLURM (no SLURM_JOB_ID, CONTAINER_IMAGE=none and VLLM_IMAGE=none) both run directly here.
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_init
kit_container_args
if [ $# -lt 1 ] || [ ! -f "$1/config.json" ]; then
  echo "error: first argument must be an HF model directory (with config.json), got '${1:-}'" >&2
  exit 2
fi
MODEL_DIR=$(cd "$1" && pwd); shift
VLLM_IMAGE=${VLLM_IMAGE:-$DEFAULT_VLLM_IMAGE}
VLLM_VENV=${VLLM_VENV:-$DEFAULT_VLLM_VENV}
case "$VLLM_VENV" in /*) ;; *) VLLM_VENV="$KIT_DIR/$VLLM_VENV" ;; esac
PORT=${VLLM_PORT:-$((20000 + ${SLURM_JOB_ID:-$$} % 10000))}
NAME=${VLLM_MODEL_NAME:-$(basename "$MODEL_DIR")}
URL="http://127.0.0.1:$PORT"
LOG="$JOB_LOG_DIR/vllm.log"

server=(python3 -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --served-model-name "$NAME"
        --host 127.0.0.1 --port "$PORT" --tensor-parallel-size "${GPUS_PER_NODE:-1}")
# shellcheck disable=SC2206  # VLLM_ARGS is a list of flags on purpose
server+=(${VLLM_ARGS:-})
if [ "$VLLM_IMAGE" = none ]; then
  if [ ! -x "$VLLM_VENV/bin/python" ]; then
    echo "error: VLLM_IMAGE=none and no venv at $VLLM_VENV: build it (make vllm VLLM_VENV=...) or set VLLM_VENV" >&2
    exit 2
  fi
  server[0]="$VLLM_VENV/bin/python"
  step=()
else
  step=(--container-image="$VLLM_IMAGE" --container-mounts="$KIT_DIR:$KIT_DIR,$WORKSPACE:$WORKSPACE${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}")
fi
if [ -n "${SLURM_JOB_ID:-}" ]; then
  srun --overlap --nodes=1 --ntasks=1 "${step[@]}" --output="$LOG" "${server[@]}" &
else
  "${server[@]}" >"$LOG" 2>&1 &
fi
server_pid=$!
# shellcheck disable=SC2317  # called by the EXIT trap
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  echo "vLLM stopped; its log: $LOG"
}
trap stop_server EXIT
echo "starting vLLM for $MODEL_DIR as '$NAME' on $URL (log $LOG)"
deadline=$((SECONDS + ${VLLM_START_TIMEOUT:-1800}))
py=$(kit_batch_python)
until "$py" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/v1/models', timeout=5).read()" "$URL" 2>/dev/null; do
  if ! kill -0 "$server_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: vLLM did not start serving $MODEL_DIR within ${VLLM_START_TIMEOUT:-1800}s; the end of $LOG:" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 3
  fi
  sleep 5
done
echo "vLLM serves $NAME after ${SECONDS}s"
client=(python -m inference eval code --endpoint "$URL" --model "$NAME" "$@")
rc=0
if [ -n "${SLURM_JOB_ID:-}" ]; then
  if [ "$CONTAINER_IMAGE" = none ]; then
    srun --overlap --nodes=1 --ntasks=1 bash -c "source '$KIT_VENV/bin/activate'; exec \"\$@\"" kit "${client[@]}" || rc=$?
  else
    srun --overlap --nodes=1 --ntasks=1 "${KIT_CONTAINER_ARGS[@]}" "${client[@]}" || rc=$?
  fi
else
  "$KIT_VENV/bin/python" "${client[@]:1}" || rc=$?
fi
echo "evaluation exited with $rc"
exit "$rc"
