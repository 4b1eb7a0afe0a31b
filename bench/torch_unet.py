"""PyTorch / diffusers side of the throughput benchmarks, plus the stdlib-only helpers the JAX
benchmark scripts use to launch it.

PyTorch and diffusers are NOT jaxdiff dependencies.  They live in a separate virtual environment
(default ``/tmp/jaxdiff-bench-venv``, override with ``--torch-python`` or the environment variable
``JAXDIFF_BENCH_TORCH_PYTHON``); ``bench/train_throughput.py --setup-venv`` creates it.  This file
is run by that environment's python as a worker:

  python bench/torch_unet.py train  --iters 5 --warmup 2
  python bench/torch_unet.py sample --iters 5 --warmup 1 --samplers ddim:50,heun:18
  python bench/torch_unet.py conv   --iters 10 --warmup 2 --shapes '[[32, 32, 32, 64, 64, 3, 1]]'

and prints one line ``RESULT {json}``.  Importing it from the main python (as the JAX scripts do)
needs only the standard library: torch is imported inside the worker functions.

The network is the diffusers U-Net closest to jaxdiff's "default U-Net" (base 64, channel_mult
(1, 2, 2), 2 residual blocks per level, self-attention at 16x16 with one head, GroupNorm 32,
class table of 10 + 1 rows, the last row the null token); see docs/performance.md for how the
two differ.
"""
from __future__ import annotations

import argparse
import datetime
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_VENV = "/tmp/jaxdiff-bench-venv"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
NUM_CLASSES = 10
IMAGE = (32, 32, 3)
RESULT_PREFIX = "RESULT "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# stdlib helpers used by the orchestrating scripts (main python, no torch)
# ------------------------------------------------------------------------------------------------


def add_runner_args(p) -> None:
    """The options both benchmarks share: PyTorch venv, load wait, output, worker mode."""
    import argparse

    p.add_argument("--torch-python", default=None,
                   help=f"python of the PyTorch venv (default $JAXDIFF_BENCH_TORCH_PYTHON or "
                        f"{DEFAULT_VENV}/bin/python)")
    p.add_argument("--setup-venv", action="store_true", help="create the PyTorch venv first")
    p.add_argument("--wait-load", type=float, default=0.0,
                   help="wait until the 1-min load average is below this (0: do not wait)")
    p.add_argument("--wait-timeout", type=float, default=1500.0)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--baseline", default=None, metavar="REV",
                   help="also time jaxdiff as of git revision REV (checked out in a temporary "
                        "git worktree, its own bench worker) as the variant 'baseline': the "
                        "before/after of a change, measured in the same run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


@contextlib.contextmanager
def baseline_checkout(repo: str, rev: str | None):
    """Yields (path, short hash) of a temporary detached git worktree of ``repo`` at ``rev``
    (None: yields (None, None)); the worktree is removed afterwards."""
    if rev is None:
        yield None, None
        return
    short = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], check=True,
                           capture_output=True, text=True).stdout.strip()
    path = os.path.join(tempfile.mkdtemp(prefix="jaxdiff-baseline-"), "repo")
    subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", path, rev], check=True,
                   capture_output=True)
    try:
        yield path, short
    finally:
        subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", path],
                       capture_output=True)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def with_baseline(variants: list[str], rev: str | None) -> list[str]:
    """``variants`` with 'baseline' right after 'default' (first if absent) when rev is set."""
    if rev is None:
        return variants
    at = variants.index("default") + 1 if "default" in variants else 0
    return [*variants[:at], "baseline", *variants[at:]]


def variant_label(labels: dict, args, variant: str) -> str:
    """The table label of a variant; 'baseline' names the revision it ran."""
    if variant == "baseline":
        return f"JAX, jaxdiff at `{args.baseline_short}` (`--baseline {args.baseline}`)"
    return labels[variant]


def worker_script(args, variant: str, script: str) -> str:
    """The bench script a JAX variant runs: this checkout's, or the baseline worktree's."""
    if variant == "baseline":
        return os.path.join(args.baseline_path, "bench", os.path.basename(script))
    return os.path.abspath(script)


def parse_runner(p, argv, jax_worker):
    """Parses ``argv`` with parser ``p`` (which has ``add_runner_args``).  In worker mode runs
    ``jax_worker(args)``, prints its RESULT line and returns None; otherwise creates the PyTorch
    venv when ``--setup-venv`` asks and returns the args."""
    args = p.parse_args(argv)
    if args.worker:
        emit(jax_worker(args))
        return None
    if args.setup_venv:
        setup_venv(torch_python(args.torch_python))
    return args


def time_calls(fn, iters: int, warmup: int = 0) -> list[float]:
    """Wall seconds of ``iters`` calls of ``fn`` (which must block until done) after ``warmup``
    untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def torch_python(flag_value: str | None) -> str:
    """The venv python for the PyTorch side: flag, then $JAXDIFF_BENCH_TORCH_PYTHON, then default."""
    return (flag_value or os.environ.get("JAXDIFF_BENCH_TORCH_PYTHON")
            or os.path.join(DEFAULT_VENV, "bin", "python"))


def setup_venv(python: str) -> None:
    """Creates the benchmark venv (if missing) and installs torch (pinned, CPU), diffusers, numpy."""
    venv = os.path.dirname(os.path.dirname(python))
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", TORCH_PIN, "diffusers", "numpy"], check=True)


def cpu_info() -> dict:
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    return dict(cpu_model=model, cores=os.cpu_count())


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_load(threshold: float, timeout_s: float, poll_s: float = 60.0) -> dict:
    """Polls the 1-minute load average until it is below ``threshold`` or ``timeout_s`` passes."""
    start = time.time()
    while True:
        load = load_average()
        waited = time.time() - start
        if threshold <= 0 or load < threshold:
            return dict(load_at_start=load, waited_s=round(waited), gave_up=False)
        if waited >= timeout_s:
            return dict(load_at_start=load, waited_s=round(waited), gave_up=True)
        print(f"load average {load:.2f} >= {threshold}; waiting ({waited:.0f} s so far)",
              flush=True)
        time.sleep(poll_s)


def run_worker(cmd: list[str], env: dict | None = None, label: str = "") -> dict:
    """Runs one worker process; returns its RESULT json (stderr is passed through on failure)."""
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    t0 = time.time()
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True)
    wall = time.time() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"worker {label or cmd} failed with exit code {proc.returncode}")
    out = json.loads(lines[-1][len(RESULT_PREFIX):])
    out["process_wall_s"] = wall
    return out


def emit(result: dict) -> None:
    """Worker side: adds peak RSS and prints the RESULT line."""
    # ru_maxrss is in KiB on Linux.
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def summarize(times: list[float]) -> dict:
    return dict(times=times, median_s=statistics.median(times))


def replace_section(path: str, name: str, body: str, header: str) -> None:
    """Writes ``body`` between the markers of section ``name`` in ``path`` (creating the file
    with ``header`` or appending the section when missing); other sections are kept."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(path).read() if os.path.exists(path) else header
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def run_meta(script: str, argv: list[str] | None, wait: dict | None = None, **extra) -> dict:
    """What a bench's doc section opens with: the command that made it (``script`` relative to
    the repository, with ``argv`` or the process's arguments), the date, the machine and, given
    ``wait`` from ``wait_for_load``, the load average at the start and now; plus ``extra``."""

    meta = dict(command="python " + " ".join(
        [os.path.relpath(os.path.abspath(script), REPO)] + (argv or sys.argv[1:])),
        date=datetime.date.today().isoformat(), **cpu_info(), **extra)
    if wait is not None:
        meta.update(load_start=wait["load_at_start"], waited_s=wait["waited_s"],
                    gave_up=wait["gave_up"], load_end=load_average())
    return meta


def publish(text: str, doc: str, section: str, header: str, write: bool) -> None:
    """Prints a bench's rendered section and, when ``write``, replaces it in ``doc``."""
    print(text)
    if write:
        replace_section(doc, section, text, header)
        print(f"wrote {doc}")


# ------------------------------------------------------------------------------------------------
# PyTorch workers (venv python)
# ------------------------------------------------------------------------------------------------

def build_unet():
    """diffusers' closest match to jaxdiff's default U-Net (see the module docstring)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE[0], in_channels=IMAGE[2], out_channels=IMAGE[2],
        block_out_channels=(64, 128, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,              # one head per attention block (head dim = width)
        norm_num_groups=32,
        resnet_time_scale_shift="scale_shift",  # AdaGN, as in jaxdiff's ResBlock
        num_class_embeds=NUM_CLASSES + 1,     # row NUM_CLASSES is the null (CFG) token
    )


def _versions() -> dict:
    import diffusers
    import torch

    return dict(torch=torch.__version__, diffusers=diffusers.__version__,
                torch_threads=torch.get_num_threads())


def train_worker(args) -> dict:
    import torch
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    net = build_unet().train()
    params = [p for p in net.parameters()]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator().manual_seed(1)
    b = args.batch
    images = torch.rand((b, IMAGE[2], IMAGE[0], IMAGE[1]), generator=gen) * 2 - 1  # NCHW
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen)

    def step(s: int) -> float:
        t = torch.randint(0, 1000, (b,))
        eps = torch.randn_like(images)
        x_t = sched.add_noise(images, eps, t)
        drop = torch.rand(b) < 0.1                                    # CFG condition dropout
        cond = torch.where(drop, torch.full_like(labels, NUM_CLASSES), labels)
        out = net(x_t, t, class_labels=cond).sample
        loss = torch.nn.functional.mse_loss(out, eps)                 # eps-MSE
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1.0 + s + 1) / (10.0 + s + 1))            # EMA with warm-up
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        return float(loss)

    t0 = time.perf_counter()
    loss0 = step(0)
    first = time.perf_counter() - t0
    for s in range(1, args.warmup):
        step(s)
    times, loss = [], loss0
    for s in range(args.warmup, args.warmup + args.iters):
        t0 = time.perf_counter()
        loss = step(s)
        times.append(time.perf_counter() - t0)
    return dict(side="torch", params=n_params, first_s=first, loss_first=loss0, loss_last=loss,
                batch=b, **summarize(times), **_versions())


def sample_worker(args, sampler: str, steps: int) -> dict:
    import torch
    from diffusers import DDIMScheduler, HeunDiscreteScheduler

    torch.manual_seed(0)
    net = build_unet().eval()
    n_params = sum(p.numel() for p in net.parameters())
    b, scale = args.batch, 2.0
    if sampler == "ddim":
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    else:
        sched = HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    def one_call(seed: int) -> tuple[float, int]:
        """The standard pipeline loop: one batched (cond, null) call per model evaluation."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
        both = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])
        sched.set_timesteps(steps)
        x = torch.randn((b, IMAGE[2], IMAGE[0], IMAGE[1]), generator=gen)
        x = x * sched.init_noise_sigma
        nfe = 0
        with torch.inference_mode():
            for t in sched.timesteps:
                x_in = sched.scale_model_input(torch.cat([x, x]), t)
                out = net(x_in, t, class_labels=both).sample
                cond, uncond = out.chunk(2)
                x = sched.step(uncond + scale * (cond - uncond), t, x).prev_sample
                nfe += 1
        return float(x.abs().mean()), nfe

    t0 = time.perf_counter()
    _, nfe = one_call(0)
    first = time.perf_counter() - t0
    for s in range(1, args.warmup):
        one_call(s)
    times = []
    for s in range(args.iters):
        t0 = time.perf_counter()
        one_call(100 + s)
        times.append(time.perf_counter() - t0)
    return dict(side="torch", sampler=sampler, steps=steps, nfe=nfe, params=n_params,
                first_s=first, batch=b, **summarize(times))


def conv_worker(args) -> dict:
    """Time of each convolution in ``args.shapes`` (JSON list of [B, H, W, Cin, Cout, k, stride],
    'SAME' padding) with torch's conv2d in NCHW and channels_last memory formats: the forward
    (``row[fmt]``) and the forward + backward to input, weight and bias with an all-ones output
    gradient (``row[fmt + "_train"]``)."""
    import torch

    out = []
    for b, h, w, cin, cout, k, stride in json.loads(args.shapes):
        x = torch.randn(b, cin, h, w)
        weight, bias = torch.randn(cout, cin, k, k), torch.randn(cout)
        row = {}
        for fmt, mf in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xf, wf = x.contiguous(memory_format=mf), weight.contiguous(memory_format=mf)
            with torch.inference_mode():
                times = time_calls(lambda: torch.nn.functional.conv2d(
                    xf, wf, bias, stride=stride, padding=k // 2), args.iters, args.warmup)
            row[fmt] = statistics.median(times)
            leaves = [t.detach().clone().requires_grad_(True) for t in (xf, wf, bias)]

            def train_call():
                y = torch.nn.functional.conv2d(*leaves, stride=stride, padding=k // 2)
                torch.autograd.grad(y, leaves, torch.ones_like(y))

            row[fmt + "_train"] = statistics.median(time_calls(train_call, args.iters,
                                                               args.warmup))
        out.append(row)
    return dict(side="torch", convs=out, **_versions())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("train", "sample", "params", "conv"))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--samplers", default="ddim:50,heun:18",
                   help="comma-separated name:steps, name in {ddim, heun}")
    p.add_argument("--shapes", default="[]", help="conv mode: JSON list of "
                   "[B, H, W, Cin, Cout, k, stride]")
    args = p.parse_args(argv)
    if args.mode == "conv":
        emit(conv_worker(args))
        return
    if args.mode == "params":
        net = build_unet()
        emit(dict(side="torch", params=sum(q.numel() for q in net.parameters()), **_versions()))
        return
    if args.mode == "train":
        args.batch = args.batch or 32
        emit(train_worker(args))
    else:
        args.batch = args.batch or 16
        out = dict(side="torch", runs={}, **_versions())
        for item in args.samplers.split(","):
            name, steps = item.split(":")
            out["runs"][name] = sample_worker(args, name, int(steps))
        out["params"] = next(iter(out["runs"].values()))["params"]
        emit(out)


if __name__ == "__main__":
    main()
