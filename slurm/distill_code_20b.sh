#!/usr/bin/env bash
#SBATCH --job-name=distill_code_20b
#SBATCH --nodes=8
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# gpt-oss-20b taught by gpt-oss-120b's logits on code + replay: student from models/gpt-oss-20b/megatron
# (or checkpoint.pretrained_checkpoint=...), teacher from models/gpt-oss-120b/megatron
# (or model.teacher.pretrained_checkpoint=...).
# Usage: sbatch [--nodes N ...] slurm/distill_code_20b.sh [key=value ...]   (RECIPE=... picks another recipe)
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_train "${RECIPE:-gpt_oss_20b_distill_code}" "$@"
