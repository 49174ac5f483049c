#!/usr/bin/env bash
#SBATCH --job-name=convert
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
# HF <-> Megatron conversion as a job: import | export | validate | roundtrip (python -m conversion).
# One task per GPU; give TP x PP x EP GPUs for a sharded layout, e.g.
#   sbatch slurm/convert.sh import --hf $WORKSPACE/models/gpt-oss-20b/hf --out $WORKSPACE/models/gpt-oss-20b/megatron
#   sbatch --gpus-per-node=4 --ntasks-per-node=4 slurm/convert.sh export --megatron DIR --out DIR --ep 4 --dtype mxfp4
#   sbatch slurm/convert.sh roundtrip --hf $WORKSPACE/models/gpt-oss-20b/hf
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_tool conversion "$@"
