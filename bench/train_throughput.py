"""Train-step throughput: jaxdiff's default U-Net vs the closest diffusers UNet2DModel (PyTorch).

One AdamW step (lr 2e-4, betas (0.9, 0.999), eps 1e-8, no weight decay, grad-norm clip 1.0, one
EMA at 0.999 with warm-up) on the eps-MSE loss at a uniformly random time, batch 32 of 32x32x3
images, 10 classes with 10% CFG condition dropout to the null token.  Every variant runs in its
own process; rounds alternate the order; each process does warm-up steps and then times
``--iters`` steps (median reported).  JAX variants:

  default    jaxdiff as imported (it appends its CPU XLA flag, see jaxdiff/xla_flags.py)
  flag_off   JAXDIFF_NO_XLA_FLAGS=1 (XLA's own CPU defaults)
  2dev       XLA_FLAGS=--xla_force_host_platform_device_count=2: data parallel over two
             simulated CPU devices (jaxdiff's flag on)

plus ``torch`` (diffusers, eager, in the venv given by --torch-python).  On an accelerator
backend (GPU, TPU) the JAX worker also reports MFU (FLOPs from the compiled step's cost analysis
/ step time / dense peak of the device kind); ``--model`` picks the network of a full-scale
config instead of the default U-Net (JAX only).  From the repository root:

  python -m bench.train_throughput                    # measure, write docs/performance.md
  python -m bench.train_throughput --setup-venv       # first create the PyTorch venv
  python -m bench.train_throughput --iters 1 --warmup 1 --rounds 1 --no-write   # smoke test
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from bench import common as C

MODULE = "bench.train_throughput"
VARIANT_LABELS = {
    "default": "JAX, jaxdiff default (its CPU XLA flag on)",
    "flag_off": "JAX, flag off (`JAXDIFF_NO_XLA_FLAGS=1`)",
    "2dev": "JAX, 2 simulated CPU devices, data parallel",
    "torch": "PyTorch eager, diffusers UNet2DModel",
}

# Dense peak FLOP/s per JAX device by device kind and compute dtype, for MFU: the first entry
# whose key is a substring of the device kind wins, so more specific keys come first.  TPU v2 / v3
# expose each TensorCore as a device (half a chip); v4 and later one device per chip.  TPUs
# list no float32 peak: their float32 matmuls run as bfloat16 passes at JAX's default precision.
PEAK_FLOPS = (
    ("H200", {"bfloat16": 989e12, "float32": 494e12}),   # float32 peak: TF32 tensor cores
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float32": 494e12}),   # SXM
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("L4", {"bfloat16": 121e12, "float32": 60e12}),
    ("TPU v2", {"bfloat16": 22.5e12}),
    ("TPU v3", {"bfloat16": 61.5e12}),
    ("TPU v4 lite", {}),                                  # v4i: no published figure used here
    ("TPU v4", {"bfloat16": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12}),                # v5e
    ("TPU v5", {"bfloat16": 459e12}),                     # v5p
    ("TPU v6 lite", {"bfloat16": 918e12}),                # v6e (Trillium)
)


ARCH_NOTE = """\
The two networks.  Shared: 3x3 input conv to 64 channels; encoder levels of 64 / 128 / 128
channels at 32 / 16 / 8 pixels with 2 residual blocks each and stride-2 3x3 conv downsampling;
middle res - attention - res at 8x8; decoder with 3 residual blocks per level, each concatenating
one encoder activation, nearest-neighbour + 3x3 conv upsampling; one-head self-attention after
every residual block at 16x16; sinusoidal(64) -> MLP -> 256-wide time embedding plus an 11-row
class table (row 10 = null); time and class enter each residual block as a scale and shift after
its second GroupNorm (ADM's AdaGN; diffusers `resnet_time_scale_shift="scale_shift"`);
GroupNorm(32) -> SiLU -> 3x3 conv output.  Differences: diffusers keeps an affine scale / bias
on that second GroupNorm (+3,712 parameters) and, with `scale_shift`, its middle attention block
has no GroupNorm (-256), which is the whole parameter difference; jaxdiff computes q, k, v with
one fused Linear (diffusers: three), zero-initialises the last layer of every residual branch,
attention block and the output (no effect on speed), uses GroupNorm eps 1e-6 (torch: 1e-5), NHWC
layout (torch: NCHW) and a continuous t scaled by 1000 as the noise input (diffusers: integer
timesteps).  The loss path is the same: uniform t, x_t = alpha x0 + sigma eps on the cosine VP
schedule, MSE on eps."""


def model_config(num_heads: int = 1, dtype: str = "float32", batch: int = 32):
    """jaxdiff's 'default U-Net' for 32x32x3, 10 classes, and the benchmark's training setup."""
    from jaxdiff.config import base_config
    from jaxdiff.data import default_data_config
    from jaxdiff.models import default_unet_config

    model = default_unet_config()
    model.base_channels = 64
    model.channel_mult = (1, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.num_heads = num_heads
    model.num_groups = 32
    model.dropout = 0.0
    model.dtype = dtype
    config = base_config(default_data_config("cifar10"), model)
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.parameterization = "eps"
    config.diffusion.weighting = "native"      # plain MSE on eps
    config.diffusion.time_sampler = "uniform"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 2e-4
    config.optim.lr_schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0
    config.train.batch_size = batch
    config.train.ema_decays = (0.999,)
    return config


# --model: the default U-Net above, or the network of a full-scale experiment config (JAX only;
# the accelerator benchmarks): config file, data shape, classes.
CONFIG_MODELS = {
    "cifar10_unet": ("cifar10_unet.py", (32, 32, 3), 10),
    "cifar10_edm": ("cifar10_edm.py", (32, 32, 3), 10),
    "imagenet64_dit": ("imagenet64_dit.py", (64, 64, 3), 1000),
}
MODELS = ("default", *CONFIG_MODELS)


def bench_model(name: str, num_heads: int = 1, dtype: str = "float32", batch: int = 32):
    """(config, data_shape, num_classes) of benchmark model ``name`` (see MODELS) with the
    compute ``dtype`` and the global ``batch`` (other knobs as in the experiment config)."""
    if name == "default":
        return model_config(num_heads, dtype, batch), (32, 32, 3), 10
    if name not in CONFIG_MODELS:
        raise ValueError(f"--model: unknown {name!r}; choose one of {MODELS}")
    from jaxdiff.config import load_config_file

    fname, shape, classes = CONFIG_MODELS[name]
    config = load_config_file(os.path.join(C.REPO, "configs", fname),
                              {"model.dtype": dtype, "train.batch_size": batch})
    return config, shape, classes


def peak_flops(device_kind: str, dtype: str) -> float | None:
    for key, table in PEAK_FLOPS:
        if key.lower() in device_kind.lower():
            return table.get(dtype)
    return None


def flops_of(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def jax_worker(args) -> dict:
    import jaxdiff  # noqa: F401  (first: appends its XLA flag before the backend starts)
    import jax
    import numpy as np

    from jaxdiff import parallel
    from jaxdiff.jobs.train import build_trainer, compile_train_step, place_state

    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    config, shape, classes = bench_model(args.model, args.num_heads, dtype, args.batch)
    trainer, state = build_trainer(config, classes, shape)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["model"]["params"]))
    mesh = parallel.make_mesh(config.mesh)
    step_fn, shard = compile_train_step(trainer, state, mesh)
    state = place_state(state, shard)
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (args.batch, *shape)).astype(np.float32)
    labels = rng.integers(0, classes, (args.batch,)).astype(np.int32)
    images, labels = parallel.global_batch((images, labels), mesh)
    batch = dict(x=images, label=labels)

    t0 = time.perf_counter()
    lowered = step_fn.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    trace_s, compile_s = t1 - t0, time.perf_counter() - t1
    flops = flops_of(compiled)

    def step(state):
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        return state, m

    t0w = time.perf_counter()
    state, m = step(state)
    first = time.perf_counter() - t0w
    loss0 = float(m["loss"])
    for _ in range(1, args.warmup):
        state, m = step(state)
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        state, m = step(state)
        times.append(time.perf_counter() - t0)
    out = dict(side="jax", params=n_params, trace_s=trace_s, compile_s=compile_s,
               first_s=first, loss_first=loss0, loss_last=float(m["loss"]), batch=args.batch,
               backend=backend, devices=jax.device_count(),
               device_kind=jax.devices()[0].device_kind, dtype=dtype,
               xla_flags=os.environ.get("XLA_FLAGS", ""), flops_per_step=flops,
               **C.summarize(times))
    if backend != "cpu" and flops:
        # cost_analysis counts one device's program; with several devices multiply by them.
        total = flops * (jax.device_count() if jax.device_count() > 1 else 1)
        peak = peak_flops(out["device_kind"], dtype)
        achieved = total / out["median_s"]
        out.update(achieved_flops=achieved, peak_flops=peak,
                   mfu=(achieved / (peak * jax.device_count())) if peak else None)
    return out


def worker_cmd(args, variant: str) -> tuple[list[str], str]:
    """(command, working directory) of one train-step worker of ``variant``."""
    common = ["--iters", str(args.iters), "--warmup", str(args.warmup), "--batch", str(args.batch)]
    if variant == "torch":
        cmd, cwd = C.torch_worker_cmd(args, "train")
        return [*cmd, *common], cwd
    cmd, cwd = C.jax_worker_cmd(args, variant, MODULE)
    cmd += [*common, "--num-heads", str(args.num_heads), "--model", args.model]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    return cmd, cwd


def report_step(args):
    """run_all's progress line for train-step workers."""
    def report(r: int, v: str, res: dict) -> None:
        print(f"[train] round {r + 1} {v:9s} median {res['median_s']:.3f} s  "
              f"({args.batch / res['median_s']:.1f} images/s)  peak RSS "
              f"{res['peak_rss_mib']:.0f} MiB  load {res['load_after']:.2f}", flush=True)
    return report


def render(args, results, meta) -> str:
    torch_med = (statistics.median([r["median_s"] for r in results["torch"]])
                 if "torch" in results else None)
    accel = any(r.get("backend", "cpu") != "cpu" for rs in results.values() for r in rs)
    rows = ["| variant | parameters | compile s (trace + XLA) | s/step per round (median) | "
            "images/s | peak RSS MiB | vs PyTorch |",
            "|---|---|---|---|---|---|---|"]
    for v, rs in results.items():
        med = statistics.median([r["median_s"] for r in rs])
        rounds = " / ".join(f"{r['median_s']:.3f}" for r in rs)
        comp = ("-" if v == "torch" else " / ".join(
            f"{r['trace_s'] + r['compile_s']:.1f}" for r in rs))
        rss = max(r["peak_rss_mib"] for r in rs)
        ratio = f"{torch_med / med:.2f}x" if torch_med else "-"
        label = C.variant_label(VARIANT_LABELS, args, v)
        rows.append(f"| {label} | {rs[0]['params']:,} | {comp} | {rounds} | "
                    f"{args.batch / med:.1f} | {rss:.0f} | {ratio} |")
    jax_any = C.first_jax_result(results)
    torch_any = results["torch"][0] if "torch" in results else {}
    lines = [
        "## Training" + ("" if args.model == "default" else f": `{args.model}` network"),
        "",
        f"Generated by `{meta['command']}` on {meta['date']}.",
        "",
        f"Machine: {meta['cpu_model']}, {meta['cores']} cores; 1-minute load average "
        f"{meta['load_start']:.2f} at the start (after waiting {meta['waited_s']} s"
        f"{', gave up waiting' if meta['gave_up'] else ''}) and {meta['load_end']:.2f} at the "
        f"end.  Versions: jax {meta['jax']}, jaxlib {meta['jaxlib']}, flax {meta['flax']}, "
        f"optax {meta['optax']}, torch {torch_any.get('torch', '-')}, diffusers "
        f"{torch_any.get('diffusers', '-')} (torch threads: {torch_any.get('torch_threads', '-')})."
        f"  Backend: {jax_any['backend']}, dtype {jax_any['dtype']}.",
        "",
        (f"Work: one optimizer step, batch {args.batch}, 32x32x3, 10 classes (+ null token, "
         "10% CFG dropout), eps-MSE at uniform random t, AdamW (lr 2e-4, no weight decay), "
         "grad-norm clip 1.0, one EMA (0.999, warm-up).  " if args.model == "default" else
         f"Work: one optimizer step of the network, loss, optimizer and EMAs of "
         f"`configs/{CONFIG_MODELS[args.model][0]}` on random images and labels, batch "
         f"{args.batch}.  ") +
        "Each variant in its own process, "
        f"{args.rounds} rounds in alternating order, {args.warmup} warm-up steps then median of "
        f"{args.iters} timed steps per process; images/s from the median over rounds.  Peak RSS "
        "is the process's `ru_maxrss` (largest over rounds).  Ratio: PyTorch s/step / variant "
        "s/step (> 1: faster than PyTorch).",
        "",
        *rows,
        "",
        ARCH_NOTE if args.model == "default" else "",
        "",
    ]
    if accel:
        lines += ["Accelerator (MFU = cost-analysis FLOPs per step / step time / dense peak of "
                  "the device kind and dtype):", ""]
        for v, rs in results.items():
            for r in rs:
                if r.get("backend", "cpu") != "cpu":
                    mfu = r.get("mfu")
                    mfu_text = (f"{100 * mfu:.1f}%" if mfu else
                                "n/a (no peak for this device kind and dtype)")
                    lines.append(f"- {v}: {r['device_kind']}, {r['dtype']}, "
                                 f"{r['flops_per_step']:.3e} FLOP/step, "
                                 f"{r.get('achieved_flops', 0) / 1e12:.1f} TFLOP/s, "
                                 f"MFU {mfu_text}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5, help="timed steps per process (>= 5 for docs)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (incl. compile)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--num-heads", type=int, default=1)
    p.add_argument("--dtype", default=None, help="compute dtype (default float32 on CPU, "
                   "bfloat16 on GPU)")
    p.add_argument("--variants", default="default,flag_off,2dev,torch")
    p.add_argument("--model", default="default", choices=MODELS,
                   help="the default U-Net (compared with PyTorch) or a full-scale config's "
                   "network (JAX variants only; for GPU / TPU MFU)")
    C.add_runner_args(p)
    args = C.parse_runner(p, argv, jax_worker)
    if args is None:
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.model != "default" and "torch" in variants:
        p.error(f"--model {args.model}: there is no matched PyTorch network; pass JAX "
                "--variants only (e.g. --variants default)")
    wait = C.wait_for_load(args.wait_load, args.wait_timeout)
    with C.baseline_checkout(C.REPO, args.baseline) as (args.baseline_path, args.baseline_short):
        results = C.run_all(args, C.with_baseline(variants, args.baseline), worker_cmd, "train",
                            report_step(args))
    meta = C.run_meta(MODULE, argv, wait, **C.versions())
    C.publish(render(args, results, meta),
              C.doc_section("training", args.model, C.results_backend(results)),
              not args.no_write)


if __name__ == "__main__":
    main()
