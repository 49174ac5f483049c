#!/usr/bin/env bash
#SBATCH --job-name=check_rendezvous
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --time=00:10:00
#SBATCH --output=%x-%j.out
# Smoke test of a new cluster or allocation: every rank joins one process group and all-reduces
# its rank. Usage: sbatch [--nodes N --gpus-per-node G] slurm/check_rendezvous.sh
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_init
kit_container_args
kit_launch python -m kit.rendezvous
