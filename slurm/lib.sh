#!/usr/bin/env bash
# Shared library of the SLURM job scripts: sourced, never run. A training script is
#   source lib.sh; kit_train RECIPE "$@"   (kit_init, kit_container_args, kit_plan, kit_launch)
# and a tool job (conversion, data prep, generation) is `source lib.sh; kit_tool MODULE "$@"`, so all
# jobs resolve paths, check their layout and versions, launch and handle pre-emption the same way.
# shellcheck shell=bash

kit_init() {
  set -euo pipefail
  # sbatch runs a copy of the script from a spool directory: find the kit from the submit dir.
  KIT_DIR=${KIT_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
  if [ ! -f "$KIT_DIR/slurm/defaults.env" ]; then
    echo "error: KIT_DIR=$KIT_DIR is not the kit's checkout: submit from it or export KIT_DIR" >&2
    exit 2
  fi
  cd "$KIT_DIR"
  # shellcheck source=slurm/defaults.env
  source "$KIT_DIR/slurm/defaults.env"
  CONTAINER_IMAGE=${CONTAINER_IMAGE:-$DEFAULT_CONTAINER_IMAGE}
  KIT_VENV=${KIT_VENV:-$KIT_DIR/$DEFAULT_VENV}
  export KIT_DIR CONTAINER_IMAGE KIT_VENV
  export WORKSPACE=${WORKSPACE:-$KIT_DIR/workspace}  # kit/workspace.py's DEFAULT_ROOT
  JOB_LOG_DIR="$WORKSPACE/logs/${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID:-local}"
  mkdir -p "$JOB_LOG_DIR" "$WORKSPACE/cache"
  export JOB_LOG_DIR
  # caches on the shared filesystem, never in $HOME of a compute node
  export HF_HOME=${HF_HOME:-$WORKSPACE/cache/hf}
  export GPTOSS_KIT_CACHE=${GPTOSS_KIT_CACHE:-$WORKSPACE/cache/gptoss-kit}
  export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$WORKSPACE/cache/triton}
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # TP/SP comm-compute overlap
  export PYTHONUNBUFFERED=1
  NODES=${SLURM_JOB_NUM_NODES:-1}
  GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_PER_NODE:-1}}
  GPUS_PER_NODE=${GPUS_PER_NODE##*:}  # "gpu:8" -> 8
  export NODES GPUS_PER_NODE
  echo "job ${SLURM_JOB_ID:-local} on $NODES node(s) x $GPUS_PER_NODE GPU(s); workspace $WORKSPACE; logs $JOB_LOG_DIR;" \
       "container ${CONTAINER_IMAGE} (restart ${SLURM_RESTART_COUNT:-0})"
}

# The python of the batch shell: the venv when there is one (planning needs no GPU).
kit_batch_python() {
  if [ -x "$KIT_VENV/bin/python" ]; then echo "$KIT_VENV/bin/python"; else echo python3; fi
}

# Fail in seconds, before any container starts, when the layout does not fit the allocation.
kit_plan() {
  local recipe=$1; shift
  local py rc=0
  py=$(kit_batch_python)
  if "$py" -c "import megatron.bridge" 2>/dev/null || [ "$CONTAINER_IMAGE" = none ]; then
    "$py" -m recipes plan "$recipe" --nodes "$NODES" --gpus-per-node "$GPUS_PER_NODE" "$@" || rc=$?
  else  # no Megatron in the batch shell: plan in one container task (one container start)
    srun --nodes=1 --ntasks=1 "${KIT_CONTAINER_ARGS[@]}" \
      python -m recipes plan "$recipe" --nodes "$NODES" --gpus-per-node "$GPUS_PER_NODE" "$@" || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    echo "error: recipe $recipe does not fit ${NODES}x${GPUS_PER_NODE} GPUs (planner exit $rc); nothing was launched" >&2
    exit "$rc"
  fi
}

kit_container_args() {
  KIT_CONTAINER_ARGS=()
  if [ "$CONTAINER_IMAGE" != none ]; then
    local mounts="$KIT_DIR:$KIT_DIR,$WORKSPACE:$WORKSPACE${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
    KIT_CONTAINER_ARGS=(--container-image="$CONTAINER_IMAGE" --container-mounts="$mounts" --container-workdir="$KIT_DIR")
  fi
}

# MASTER_ADDR: the first node's address as SLURM knows it (NodeAddr, falling back to its name).
# MASTER_PORT: from the job id, below Linux's ephemeral range (32768+) so that no outgoing
# connection on the node holds it. Both are derived from the allocation and never taken from the
# environment: sbatch exports the submitting shell's variables, and a MASTER_ADDR/PORT left there
# (a login node's address, a port some other process listens on) would break the rendezvous.
# KIT_MASTER_ADDR / KIT_MASTER_PORT override them on purpose.
kit_rendezvous() {
  local first addr
  first=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | sed -n 1p)  # not head: SIGPIPE under pipefail
  addr=$(scontrol show node "$first" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | sed -n 1p)
  export MASTER_ADDR=${KIT_MASTER_ADDR:-${addr:-$first}}
  export MASTER_PORT=${KIT_MASTER_PORT:-$((10000 + ${SLURM_JOB_ID:-0} % 20000))}
}

# Launch one task per GPU (KIT_TASKS_PER_NODE overrides: 1 for CPU jobs) and wait. SIGUSR1 (sbatch --signal=B:USR1@T, SLURM's pre-emption
# warning) is passed to the tasks, which checkpoint and exit 75; the job then requeues itself and
# the restart resumes from the run's checkpoint. The job exits with the training's exit code.
kit_launch() {
  kit_rendezvous
  local step_pid rc=0 preempted=0
  # shellcheck disable=SC2016  # expanded by each task's shell, not here
  # Task 0 first prints the versions it runs with into its log and stops the job when megatron.bridge
  # is older than the kit's (kit/versions.py); srun --kill-on-bad-exit then ends the other tasks.
  local env_cmd='export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; if [ "$RANK" = 0 ]; then python -m kit.versions --check || exit $?; fi; exec "$@"'
  local prefix=()
  if [ "$CONTAINER_IMAGE" = none ]; then
    prefix=(bash -c "source '$KIT_VENV/bin/activate'; $env_cmd" kit)
  else
    prefix=(bash -c "$env_cmd" kit)
  fi
  trap 'preempted=1; echo "pre-emption warning: asking the tasks to checkpoint"; kill -USR1 "$step_pid" 2>/dev/null || true' USR1
  trap 'kill -TERM "$step_pid" 2>/dev/null || true' TERM
  srun --kill-on-bad-exit=1 --ntasks-per-node="${KIT_TASKS_PER_NODE:-$GPUS_PER_NODE}" "${KIT_CONTAINER_ARGS[@]}" \
    --output="$JOB_LOG_DIR/rank-%t.log" "${prefix[@]}" "$@" &
  step_pid=$!
  while true; do  # `wait` returns early when a trapped signal arrives: wait again for the step
    wait "$step_pid" && rc=0 || rc=$?
    kill -0 "$step_pid" 2>/dev/null || break
  done
  trap - USR1 TERM
  tail -n 20 "$JOB_LOG_DIR/rank-0.log" 2>/dev/null || true
  if [ "$rc" -eq 75 ] || { [ "$preempted" -eq 1 ] && [ "$rc" -eq 0 ]; }; then
    if [ -n "${SLURM_JOB_ID:-}" ] && [ "${KIT_REQUEUE:-1}" = 1 ]; then
      echo "checkpointed after a signal: requeueing job $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID"
      exit 0
    fi
  fi
  echo "training exited with $rc"
  exit "$rc"
}

# The common body of the training scripts: plan, then launch `python -m recipes run`.
kit_train() {
  local recipe=$1; shift
  kit_init
  kit_container_args
  kit_plan "$recipe" "$@"
  kit_launch python -m recipes run "$recipe" "$@"
}

# The body of the jobs that run one kit command (conversion, generation): no planner, one task per
# GPU of the allocation (a single task on CPU-only nodes), the same environment and logs.
kit_tool() {
  kit_init
  kit_container_args
  if [ "${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}" = 0 ]; then KIT_TASKS_PER_NODE=1; fi
  kit_launch python -m "$@"
}
