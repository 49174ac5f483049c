#!/usr/bin/env bash
#SBATCH --job-name=data_prep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# Data preparation on a CPU node (no GPU asked for): python -m data_prep pretrain|sft|blend.
# Submit to your cluster's CPU partition, with the workers following --cpus-per-task:
#   sbatch -p cpu slurm/data_prep.sh pretrain 'raw/the-stack/**/*.parquet' -o $WORKSPACE/data/the-stack
# Past one node, as an array of N tasks writing one dataset (task i takes share i of the inputs;
# the last task to finish writes the manifest; see README "On a cluster"):
#   sbatch -p cpu --array=0-15 slurm/data_prep.sh pretrain 'raw/the-stack/**/*.parquet' -o $WORKSPACE/data/the-stack
# A run or task cut short (time limit, node failure, scancel) resumes where it stopped when submitted
# again with the same arguments (one task of an array: --array=I ... --tasks N): data_prep keeps its
# finished units under <output>/.work.
# shellcheck source=slurm/lib.sh
source "${KIT_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/lib.sh"
kit_tool data_prep "$@"
