#!/usr/bin/env bash
#SBATCH --job-name=sft_120b
#SBATCH --nodes=4
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# gpt-oss-120b full SFT on packed harmony data (TP2 PP4 EP8 SP); 32k packs: RECIPE=gpt_oss_120b_sft_32k sbatch --nodes 6 ...
# Usage: sbatch [--nodes N ...] slurm/sft_120b.sh [key=value ...]   (RECIPE=... picks another recipe)
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_train "${RECIPE:-gpt_oss_120b_sft}" "$@"
