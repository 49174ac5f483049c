#!/usr/bin/env bash
#SBATCH --job-name=lora_20b
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# gpt-oss-20b LoRA on one GPU.
# Usage: sbatch [--nodes N ...] slurm/lora_20b.sh [key=value ...]   (RECIPE=... picks another recipe)
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_train "${RECIPE:-gpt_oss_20b_lora}" "$@"
