#!/usr/bin/env bash
# Stage 1 as a SLURM job array: task i of n processes every n-th window of
# rows (the same split torchrun uses), so the array fills one workdir.
# Submit:  sbatch --array=0-7 launch/extract_slurm.sh configs/qwen.py runs/qwen_caption
# Resubmitting after failures recomputes only rows not yet written.
#SBATCH --job-name=probing-extract
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
set -euo pipefail
config=${1:?config file}
workdir=${2:?workdir}
export RANK=${SLURM_ARRAY_TASK_ID:?run through sbatch --array}
export WORLD_SIZE=${SLURM_ARRAY_TASK_COUNT:?run through sbatch --array}
exec python -m probing.extract --config="${config}" --workdir="${workdir}" "${@:3}"
