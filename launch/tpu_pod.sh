#!/usr/bin/env bash
# Train on every host of a Cloud TPU pod slice (one process per host, all chips in one mesh).
#
#   TPU=my-v5e-32 ZONE=us-central2-b WORKDIR=gs://bucket/runs/quickstart \
#     launch/tpu_pod.sh --config.mesh.data=-1 --config.mesh.fsdp=4
#
# Extra arguments are passed to launch/train.py (config overrides). Assumes the repository is
# checked out at $REPO on every worker with its dependencies installed (e.g. a previous
# `gcloud compute tpus tpu-vm ssh ... --worker=all --command="pip install -e $REPO"`).
#
# --distributed makes train.py call jax.distributed.initialize() with no arguments: on a TPU
# VM JAX reads the coordinator, process count and process id from the TPU metadata. The workdir
# must be storage every host sees (a gs:// bucket): Orbax writes each host's shards there and
# process 0 writes metrics.jsonl, plots and summary.json.
set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
: "${WORKDIR:?set WORKDIR to a gs:// path all hosts share}"
REPO="${REPO:-adaptive_rl}"  # relative to the remote home directory
CONFIG="${CONFIG:-configs/quickstart.py}"
PYTHON="${PYTHON:-python3}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

# printf %q quotes values for the remote shell.
ARGS=""
if (($#)); then ARGS=$(printf ' %q' "$@"); fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="
  cd $(printf %q "$REPO") && $PYTHON launch/train.py --config $(printf %q "$CONFIG") \
    --workdir $(printf %q "$WORKDIR") --distributed$ARGS"
