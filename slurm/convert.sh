#!/usr/bin/env bash
#SBATCH --job-name=convert
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
# HF <-> Megatron conversion as a job: import | export | validate | roundtrip (python -m conversion).
# The default engine converts in one task, tensor by tensor (one layer in memory, no GPU used; the
# checkpoint loads into any TP/PP/EP), e.g.
#   sbatch slurm/convert.sh import --hf $WORKSPACE/models/gpt-oss-20b/hf --out $WORKSPACE/models/gpt-oss-20b/megatron
#   sbatch slurm/convert.sh roundtrip --hf $WORKSPACE/models/gpt-oss-20b/hf --no-logits
# --engine bridge builds the model with AutoBridge, one task per GPU, TP x PP x EP of them:
#   sbatch --gpus-per-node=4 --ntasks-per-node=4 slurm/convert.sh export --megatron DIR --out DIR --ep 4 --engine bridge
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_tool conversion "$@"
