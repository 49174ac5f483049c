#!/usr/bin/env bash
#SBATCH --job-name=pretrain_120b
#SBATCH --nodes=8
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# gpt-oss-120b pretraining from scratch (PP4 EP8, the recipe says why).
# Usage: sbatch [--nodes N ...] slurm/pretrain_120b.sh [key=value ...]   (RECIPE=... picks another recipe)
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_train "${RECIPE:-gpt_oss_120b_pretrain}" "$@"
