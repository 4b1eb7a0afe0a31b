#!/usr/bin/env bash
# Runs one jaxdiff job as two local CPU processes ("hosts") joined by jax.distributed: a dry run
# of multi-host training on a single machine.
#
#   launch/local_2host.sh CONFIG WORKDIR [more jaxdiff flags...]
#   e.g. launch/local_2host.sh configs/digits.py runs/digits_2host --config.train.num_steps=20
#
# Both processes run the same `python -m jaxdiff.main --config=CONFIG --workdir=WORKDIR ...`
# with JAX_COORDINATOR_ADDRESS (localhost and a free port), JAX_NUM_PROCESSES=2 and
# JAX_PROCESS_ID=0/1; jaxdiff's config.distributed='auto' initialises jax.distributed from them.
# Environment knobs: DEVICES_PER_HOST (simulated CPU devices per process, default 2),
# PORT (coordinator port, default: a free one), PYTHON (default python3).
# Process 0 prints to the console; process 1 logs to WORKDIR/host1.log. The script waits for
# both, stops the other if one fails, and exits non-zero when either did.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2

python=${PYTHON:-python3}
devices=${DEVICES_PER_HOST:-2}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

mkdir -p "$workdir"
export JAX_PLATFORMS=cpu
export JAX_COORDINATOR_ADDRESS="localhost:${port}"
export JAX_NUM_PROCESSES=2
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"

cmd=("$python" -m jaxdiff.main "--config=${config}" "--workdir=${workdir}" "$@")
JAX_PROCESS_ID=0 "${cmd[@]}" &
pid0=$!
JAX_PROCESS_ID=1 "${cmd[@]}" >"${workdir}/host1.log" 2>&1 &
pid1=$!
trap 'kill "$pid0" "$pid1" 2>/dev/null || true' INT TERM

status=0
# Whichever process ends first: if it failed, the other may wait for it forever, so stop it,
# after a grace period in which it can end by itself (a bad config fails on both, and each
# prints its own error line). (`wait -n -p` needs bash >= 5.1.)
stop_after_grace() {
  for _ in $(seq 50); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.2
  done
  kill "$1" 2>/dev/null || true
}
first=
if ! wait -n -p first "$pid0" "$pid1"; then
  status=1
  for pid in "$pid0" "$pid1"; do
    [[ $pid == "$first" ]] || stop_after_grace "$pid"
  done
fi
for pid in "$pid0" "$pid1"; do
  if [[ $pid != "$first" ]]; then
    wait "$pid" || status=1
  fi
done
if [[ $status -ne 0 ]]; then
  echo "local_2host: a process failed; see above and ${workdir}/host1.log" >&2
fi
exit "$status"
