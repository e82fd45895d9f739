#!/usr/bin/env bash
# Stage 1 on one machine with several GPUs: one process per GPU, each writing
# a disjoint, chunk-aligned set of rows into the one workdir.
#
#   launch/extract_torchrun.sh configs/qwen.py runs/qwen_caption [NUM_GPUS]
set -euo pipefail
config=${1:?config file, e.g. configs/qwen.py}
workdir=${2:?workdir}
gpus=${3:-$(nvidia-smi -L 2>/dev/null | wc -l)}
exec torchrun --standalone --nproc_per_node="${gpus}" -m probing.extract \
  --config="${config}" --workdir="${workdir}" "${@:4}"
