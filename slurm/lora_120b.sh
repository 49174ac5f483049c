#!/usr/bin/env bash
#SBATCH --job-name=lora_120b
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# gpt-oss-120b LoRA (EP8).
# Usage: sbatch [--nodes N ...] slurm/lora_120b.sh [key=value ...]   (RECIPE=... picks another recipe)
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_train "${RECIPE:-gpt_oss_120b_lora}" "$@"
