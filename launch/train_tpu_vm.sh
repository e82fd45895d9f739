#!/usr/bin/env bash
# Stage 2 on a Cloud TPU VM slice: the same command on every host; JAX finds
# the other hosts itself (jax.distributed.initialize), the sweep's layer axis
# is sharded over all TPU cores, and process 0 writes probes/<pooling>/.
# The workdir must be readable from every host (gs://bucket/prefix works).
# Run:  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command \
#         "cd probing && bash launch/train_tpu_vm.sh gs://bucket/runs/qwen_caption --config.num_seeds=5"
set -euo pipefail
workdir=${1:?workdir}
export JAX_PLATFORMS=tpu
exec python -m probing.train_all_layers --workdir="${workdir}" \
  --config=configs/probe.py --config.distributed=True --config.devices=0 "${@:2}"
