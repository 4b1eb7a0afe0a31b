#!/usr/bin/env bash
# Runs the same jaxdiff command on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [more jaxdiff flags...]
#   e.g. launch/tpu_pod.sh my-v4-32 us-central2-b configs/cifar10_unet.py gs://bucket/runs/c10
#
# Needs: gcloud authenticated for the TPU's project; on every worker the jaxdiff repo at
# REPO_DIR (default: jaxdiff, relative to the worker's home directory) with its dependencies
# installed for PYTHON (default python3), e.g. `pip install -e . "jax[tpu]"`. CONFIG is
# relative to REPO_DIR; WORKDIR must be visible to all workers (a gs:// bucket or a shared
# mount): all hosts write the checkpoints together.
#
# Multi-host initialisation: the script reads the workers' internal IPs with `gcloud ... describe`
# and gives every worker JAX_COORDINATOR_ADDRESS (worker 0, port 8476), JAX_NUM_PROCESSES (the
# number of workers) and JAX_PROCESS_ID (the worker's own number, from the TPU VM metadata
# attribute agent-worker-number); jaxdiff's config.distributed='auto' initialises
# jax.distributed from them. Output of all workers is streamed back through gcloud.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
tpu=$1
zone=$2
config=$3
workdir=$4
shift 4
repo_dir=${REPO_DIR:-jaxdiff}
python=${PYTHON:-python3}

ips=$(gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" \
  --format='value(networkEndpoints[].ipAddress)')
IFS=';, ' read -r -a ip_list <<<"$ips"
num_workers=${#ip_list[@]}
if [[ $num_workers -lt 1 ]]; then
  echo "tpu_pod: no workers found for TPU $tpu in $zone" >&2
  exit 1
fi

# The jaxdiff command, quoted for the remote shell.
jaxdiff_cmd=$(printf '%q ' "$python" -m jaxdiff.main "--config=${config}" "--workdir=${workdir}" "$@")
metadata=http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number
remote="set -e; cd $(printf '%q' "$repo_dir")
export JAX_COORDINATOR_ADDRESS=${ip_list[0]}:8476 JAX_NUM_PROCESSES=${num_workers}
export JAX_PROCESS_ID=\$(curl -sf -H 'Metadata-Flavor: Google' ${metadata})
export PYTHONPATH=\$PWD\${PYTHONPATH:+:\$PYTHONPATH}
exec ${jaxdiff_cmd}"

echo "tpu_pod: ${num_workers} workers, coordinator ${ip_list[0]}:8476" >&2
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote"
