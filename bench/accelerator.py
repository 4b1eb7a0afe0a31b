"""The accelerator benchmarks in one run, on whatever GPU or TPU JAX finds.

Three measurements, each a worker of the throughput benchmarks with the network, loss, optimizer
and EMAs of a full-scale config, bfloat16 compute, JAX only:

  train-cifar10_unet     train step images/s and MFU, configs/cifar10_unet.py's U-Net, batch 128
  train-imagenet64_dit   train step images/s and MFU, configs/imagenet64_dit.py's DiT-B/2, batch 256
  sample-cifar10_edm     CFG sampling images/s, configs/cifar10_edm.py's network, Heun 18 steps
                         (35 NFE), batch 256

Each writes its own backend-named section of docs/performance.md (``training-cifar10_unet-gpu``,
``sampling-cifar10_edm-tpu``, ...), so an accelerator run never replaces the CPU tables.  MFU is
the compiled step's cost-analysis FLOPs / step time / the dense peak of the device kind
(``PEAK_FLOPS`` in bench/train_throughput.py; a kind not listed there gets no MFU, only
images/s and FLOP/s).

Every step runs in its own process with its own time limit, so one slow compile cannot take the
others' time; the log of every step and a copy of docs/performance.md after every step go to
``--out`` when given.  From the repository root:

  python -m bench.accelerator                      # on a GPU / TPU machine (~5-8 min on one GPU)
  python -m bench.accelerator --out results/       # also keep the log and the doc there
  python -m bench.accelerator --smoke              # anywhere, CPU too: toy sizes, nothing written
  python -m bench.accelerator --steps train-imagenet64_dit
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from bench import common as C

TRAIN_REPS = ("--rounds", "1", "--iters", "10", "--warmup", "2")
SAMPLE_REPS = ("--rounds", "1", "--iters", "3", "--warmup", "1")
SMOKE_REPS = ("--rounds", "1", "--iters", "1", "--warmup", "1", "--no-write")

# name -> (module, arguments at full size, arguments at smoke size, time limit in seconds)
STEPS = {
    "train-cifar10_unet": (
        "bench.train_throughput",
        ("--model", "cifar10_unet", "--batch", "128", *TRAIN_REPS),
        ("--model", "cifar10_unet", "--batch", "2", *SMOKE_REPS), 150),
    "train-imagenet64_dit": (
        "bench.train_throughput",
        ("--model", "imagenet64_dit", "--batch", "256", *TRAIN_REPS),
        ("--model", "imagenet64_dit", "--batch", "2", *SMOKE_REPS), 150),
    "sample-cifar10_edm": (
        "bench.sample_throughput",
        ("--model", "cifar10_edm", "--batch", "256", "--samplers", "heun:18", *SAMPLE_REPS),
        ("--model", "cifar10_edm", "--batch", "2", "--samplers", "heun:2", *SMOKE_REPS), 150),
}
SMOKE_LIMIT_SCALE = 5  # full-scale networks compile for minutes on a CPU

PROBE = ("import jax; d = jax.devices(); "
         "print(jax.default_backend(), jax.device_count(), d[0].device_kind, sep='|')")


def probe_backend() -> tuple[str, int, str]:
    """(backend, device count, device kind) as JAX sees them, from a child process: the parent
    must not initialise the accelerator (JAX would reserve its memory for the whole run)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         cwd=C.REPO)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit("bench.accelerator: JAX could not start a backend")
    backend, count, kind = out.stdout.strip().splitlines()[-1].split("|", 2)
    return backend, int(count), kind


class Log:
    """Prints and, with an output folder, appends to ``accelerator.log`` there."""

    def __init__(self, out: str | None):
        self.path = os.path.join(out, "accelerator.log") if out else None

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(text + "\n")


def run_step(name: str, smoke: bool, log: Log, out: str | None) -> int:
    """Runs one step under its time limit; returns its exit status (124: time limit)."""
    module, full, toy, limit = STEPS[name]
    limit *= SMOKE_LIMIT_SCALE if smoke else 1
    cmd = [sys.executable, "-m", module, "--variants", "default", "--dtype", "bfloat16",
           *(toy if smoke else full)]
    log(f"=== {name} (limit {limit} s): python -m {' '.join(cmd[2:])}")
    start = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, cwd=C.REPO, env=env, capture_output=True, text=True,
                              timeout=limit)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        text = "".join(x.decode() if isinstance(x, bytes) else (x or "")
                       for x in (e.stdout, e.stderr))
    log(text.rstrip())
    log(f"=== {name}: exit status {rc} after {time.time() - start:.0f} s")
    if out and os.path.exists(C.DOC):
        shutil.copy(C.DOC, os.path.join(out, "performance.md"))
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated subset of {', '.join(STEPS)}")
    p.add_argument("--smoke", action="store_true",
                   help="toy sizes, one timed iteration, nothing written; runs on a CPU too")
    p.add_argument("--out", default=None,
                   help="folder for accelerator.log and a copy of docs/performance.md")
    args = p.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        p.error(f"--steps: unknown {unknown}; choose from {list(STEPS)}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    log = Log(args.out)
    backend, count, kind = probe_backend()
    log(f"JAX backend {backend}, {count} device(s) of kind {kind!r}; "
        + ", ".join(f"{k} {v}" for k, v in C.versions().items()))
    if backend == "cpu" and not args.smoke:
        log("no accelerator found (JAX's backend is cpu); the CPU tables come from "
            "bench.train_throughput / bench.sample_throughput, and --smoke runs these steps at "
            "toy sizes on a CPU")
        return 2
    status = {name: run_step(name, args.smoke, log, args.out) for name in steps}
    log("summary: " + ", ".join(f"{k} exit {v}" for k, v in status.items()))
    return 0 if all(v == 0 for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
