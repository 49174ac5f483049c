#!/usr/bin/env bash
#SBATCH --job-name=generate
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
# Generation and evaluation from a checkpoint as a job (python -m inference ...), e.g.
#   sbatch slurm/generate.sh generate $WORKSPACE/checkpoints/gpt-oss-20b-cpt-code --prompts-file p.jsonl --out g.jsonl
#   sbatch slurm/generate.sh eval code $WORKSPACE/models/gpt-oss-20b-cpt-code/hf --problems HumanEval.jsonl --n 1
# Give TP x PP x EP GPUs (--gpus-per-node, --ntasks-per-node) for the layout the checkpoint was trained with.
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_tool inference "$@"
