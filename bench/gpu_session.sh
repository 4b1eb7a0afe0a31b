#!/usr/bin/env bash
# The GPU checks of issue #5 as one prepared run, for a session that is lent a GPU machine.
#
#   bash bench/gpu_session.sh bench   # ~8 min on an H200: MFU / images/s tables (the issue's
#                                     # numbers) and the training loop's overhead
#   bash bench/gpu_session.sh smoke   # ~4 min: numerics tests on the GPU + a short main job
#   bash bench/gpu_session.sh --cpu-smoke bench smoke   # here, on CPU: every step at toy sizes
#
# On the device: carry .whl (made by bench/device_wheels.sh) and run from the repository root,
# e.g. run(command="bash bench/gpu_session.sh bench", carry=[".whl"], timeout_s=590).  Each step
# has its own time limit, so one slow step cannot eat the others' time (the limits of `bench`
# add up to more than one call's 600 s: they are ceilings, and the last, least needed step may
# be cut).  Results land in $OUT (the device tool's output folder; a temporary folder
# elsewhere): performance.md (a copy of docs/performance.md with the GPU sections replaced: copy
# it over docs/performance.md, or take its sections), gpu_session.log, and the main job's
# summary and sample grid.
set -uo pipefail
cd "$(dirname "$0")/.."
CPU_SMOKE=0 LIMIT_SCALE=1  # on CPU the full-scale networks compile for minutes: limits x 5
if [ "${1:-}" = "--cpu-smoke" ]; then CPU_SMOKE=1 LIMIT_SCALE=5; shift; fi
PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(bench)
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
LOG=$OUT/gpu_session.log
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD

if ls .whl/*.whl >/dev/null 2>&1; then
    site=/tmp/jaxdiff-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=$site:$PWD
fi

step() {  # step NAME LIMIT_S COMMAND...: runs it with a time limit, log and rc to $LOG
    local name=$1 limit=$(( $2 * LIMIT_SCALE )) start rc
    shift 2
    echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/step.out" 2>&1
    rc=$?
    cat "$OUT/step.out" >>"$LOG"
    tail -n 25 "$OUT/step.out"
    rm -f "$OUT/step.out"
    cp docs/performance.md "$OUT/performance.md"  # after every step: the call may hit its limit
    echo "=== $name: rc $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
}

# Sizes: the documented accelerator runs, or toy sizes that only exercise the same code on CPU.
if [ $CPU_SMOKE = 1 ]; then
    B_UNET=2; B_DIT=2; B_EDM=2; HEUN=heun:2; DDIM=ddim:2; REPS=(--rounds 1 --iters 1 --warmup 1)
    SREPS=("${REPS[@]}")
    WRITE=(--no-write); LOOP=(--steps 8 --skip 2)
    TESTS=(tests/test_guidance.py::test_cfg_per_example_scale_and_interval)
    MAIN=(--config.train.num_steps=3 --config.sample.num_samples=4 --config.sample.shard_size=4
          --config.sample.steps=2 --config.sample.grid_per_class=1)
else
    B_UNET=128; B_DIT=256; B_EDM=256; HEUN=heun:18; DDIM=ddim:50
    REPS=(--rounds 1 --iters 10 --warmup 2); SREPS=(--rounds 1 --iters 3 --warmup 1)
    WRITE=(); LOOP=(); MAIN=(--config.train.num_steps=1000)
    TESTS=(tests/test_samplers.py tests/test_guidance.py tests/test_losses.py tests/test_models.py)
fi

step environment 60 bash -c "nvidia-smi -L 2>/dev/null; $PY -c 'import jax, flax, optax; \
print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'"

for part in "${PARTS[@]}"; do
    case $part in
    bench)
        step train-default-unet 100 "$PY" bench/train_throughput.py --variants default \
            "${WRITE[@]}" "${REPS[@]}" --batch "$B_UNET"
        step sample-default-unet 100 "$PY" bench/sample_throughput.py --variants default \
            "${WRITE[@]}" "${SREPS[@]}" --batch "$B_UNET" --samplers "$DDIM,$HEUN"
        step train-cifar10-unet 120 "$PY" bench/train_throughput.py --model cifar10_unet \
            --variants default "${WRITE[@]}" "${REPS[@]}" --batch "$B_UNET"
        step train-imagenet64-dit 120 "$PY" bench/train_throughput.py --model imagenet64_dit \
            --variants default "${WRITE[@]}" "${REPS[@]}" --batch "$B_DIT"
        step sample-cifar10-edm 100 "$PY" bench/sample_throughput.py --model cifar10_edm \
            --variants default "${WRITE[@]}" "${SREPS[@]}" --batch "$B_EDM" --samplers "$HEUN"
        step train-loop-overhead 150 "$PY" bench/train_loop_overhead.py --rounds 1 \
            "${WRITE[@]}" "${LOOP[@]}"
        ;;
    smoke)
        # the numerics tests on the accelerator (TF32 / bf16 defaults would show here first)
        step tests-on-device 150 "$PY" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}"
        # the README's main job, shortened: train (GPU), then sample 1,000 images; no eval
        step main-job 150 "$PY" -m jaxdiff.main --config=configs/mnist5k.py \
            --workdir="$OUT/mnist5k" --mode=train,sample \
            "${MAIN[@]}" --config.train.progress_bar=False
        for f in "$OUT"/mnist5k/train_summary.json "$OUT"/mnist5k/samples/final.png; do
            [ -f "$f" ] && cp "$f" "$OUT/"
        done
        rm -rf "$OUT/mnist5k"
        ;;
    *) echo "unknown part $part (bench, smoke)"; exit 2 ;;
    esac
done
echo "results in $OUT"
