"""T-Stitch (Pan et al., ICLR 2025) on MNIST-5k: own-feature FD, class accuracy, network FLOPs
and measured sampling wall time against the fraction of the steps given to a small model.

Protocol: the large model is the README's (``configs/mnist5k.py``, U-Net base_channels 32) and
the small one the same recipe at base_channels 16 (``configs/mnist5k_tstitch.py:small``, same
data, schedule, parameterization and step budget); both are trained by the command line's
``--mode=train`` into their workdirs if they are not there (a finished run returns at once).
Then, in this process, for every fraction in ``--fractions``: the run's own sampling path
(``RunSpec.guided`` with ``config.stitch``: CFG around the stitched denoiser, DPM-Solver++(2M)
15 steps on the uniform-t grid) draws ``--samples`` class-balanced images in batches of 250,
timed after a warm-up call, scored in the pinned feature space against the 1,000 held-out
images.  Fraction 0 is the large model alone and 1 the small one alone.  Network FLOPs per
sample are XLA's cost analysis of one call of each network times its calls per sample.

  jaxdiff reproduce tstitch_mnist5k            # ~25 min on 2 cores (training included)
  jaxdiff reproduce tstitch_mnist5k --quick    # 300 training steps each, 3 fractions
"""
from __future__ import annotations

import dataclasses
import os

from jaxdiff.reproduce import (REPRODUCTIONS, MissingPrerequisite, Paper, Reproduction,
                               run_command_line, timed_class_balanced_samples)

PAPER = Paper("T-Stitch: Accelerating Sampling in Pre-Trained Diffusion Models with "
              "Trajectory Stitching", "Pan et al.", "ICLR 2025 (arXiv 2402.14167)")
CLAIM = ("A small model can take the first, noisy steps of a large model's trajectory: on "
         "DiT-XL/2, 40% of the early timesteps can be replaced by the 10x faster DiT-S "
         "without a drop in class-conditional ImageNet FID (abstract).")
LARGE_CONFIG = os.path.join("configs", "mnist5k.py")
STITCH_CONFIG = os.path.join("configs", "mnist5k_tstitch.py")
BATCH = 250
QUICK_STEPS = 300  # --quick: training steps of each model (into WORKDIR_quick)


def add_args(p) -> None:
    p.add_argument("--workdir", default=os.path.join("runs", "mnist5k"),
                   help="the large model's workdir (default: %(default)s)")
    p.add_argument("--small-workdir", default=os.path.join("runs", "mnist5k_small"),
                   help="the small model's workdir (default: %(default)s)")
    p.add_argument("--fractions", default="0,0.2,0.4,0.6,0.8,1",
                   help="fractions of the sampling steps given to the small model")
    p.add_argument("--samples", type=int, default=1000, help="samples per fraction")


def _plan(args) -> tuple[list[float], int, str, str, list[str]]:
    """(fractions, samples, large workdir, small workdir, extra training flags)."""
    if args.quick:
        return ([0.0, 0.4, 1.0], 250, args.workdir + "_quick", args.small_workdir + "_quick",
                [f"--config.train.num_steps={QUICK_STEPS}"])
    return ([float(f) for f in args.fractions.split(",")], args.samples, args.workdir,
            args.small_workdir, [])


def stages(args) -> list[str]:
    fractions, *_ = _plan(args)
    return ["train large", "train small", "network cost"] + [f"fraction {f:g}"
                                                             for f in fractions]


def check(args) -> None:
    for path in (LARGE_CONFIG, STITCH_CONFIG):
        if not os.path.exists(path):
            raise MissingPrerequisite(f"no config {path}: run from the repository root")


def _config(small_workdir: str, fraction: float):
    """The stitched sampling config: the large model's, the small one taking ``fraction``."""
    from jaxdiff.config import load_config_file

    config = load_config_file(STITCH_CONFIG)
    config.stitch.workdirs = (small_workdir,)
    config.stitch.fractions = (float(fraction),)
    return config


def network_cost(spec, large_params, small_workdir: str) -> dict:
    """FLOPs per sample of one call of each network (XLA's cost analysis) and the measured wall
    time of one call on a batch of 250 (after a warm-up call), small and large."""
    import time

    import jax
    import jax.numpy as jnp

    from jaxdiff.combine.tstitch import network_flops
    from jaxdiff.jobs.spec import load_other_denoiser

    dens = dict(small=load_other_denoiser(spec, small_workdir, None, "stitch.workdirs"),
                large=spec.denoiser(large_params))
    x = jax.random.normal(jax.random.key(0), (BATCH,) + tuple(spec.example_shape))
    cond = jnp.arange(BATCH) % spec.num_classes
    out = {}
    for name, den in dens.items():
        call = jax.jit(lambda x, c, den=den: den(x, jnp.float32(0.5), c))
        jax.block_until_ready(call(x, cond))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            jax.block_until_ready(call(x, cond))
            times.append(time.perf_counter() - start)
        out[name] = dict(flops_per_call=network_flops(den, x, cond=cond),
                         seconds_per_call=min(times))
    return out


def run(args, progress) -> dict:
    check(args)
    fractions, samples, large_wd, small_wd, flags = _plan(args)
    train = ["--mode=train", "--config.train.progress_bar=False", *flags]
    with progress.stage("train large"):
        run_command_line([f"--config={LARGE_CONFIG}", f"--workdir={large_wd}", *train])
    with progress.stage("train small"):
        run_command_line([f"--config={STITCH_CONFIG}:small", f"--workdir={small_wd}", *train])
    from jaxdiff.guidance import evals_per_call
    from jaxdiff.jobs.samples_io import denoiser_protocol
    from jaxdiff.jobs.spec import restore_model, spec_for_data

    spec, _ = spec_for_data(_config(small_wd, 0.0))
    params, step = restore_model(spec, large_wd)
    with progress.stage("network cost"):
        cost = network_cost(spec, params, small_wd)
    calls = evals_per_call(spec.config.guidance)
    rows = []
    for f in fractions:
        with progress.stage(f"fraction {f:g}"):
            config = _config(small_wd, f)
            stitched = dataclasses.replace(spec, config=config)
            nfe = denoiser_protocol(config)["stitch"]["nfe_per_model"]
            flops = calls * (nfe[0] * cost["small"]["flops_per_call"]
                             + nfe[1] * cost["large"]["flops_per_call"])
            scores = timed_class_balanced_samples(stitched, stitched.guided(params), samples,
                                                  BATCH)
            rows.append(dict(fraction=f, nfe_small=nfe[0], nfe_large=nfe[1],
                             network_calls=calls * sum(nfe), gflops_per_sample=flops / 1e9,
                             **scores))
    base = next((r for r in rows if r["fraction"] == 0.0), rows[0])
    for r in rows:
        r["speedup"] = base["seconds_per_1000"] / r["seconds_per_1000"]
        r["flops_ratio"] = base["gflops_per_sample"] / r["gflops_per_sample"]
    s = spec.config.sample
    return dict(large_config=LARGE_CONFIG, small_config=f"{STITCH_CONFIG}:small",
                train_steps=step, sampler=s.sampler, steps=int(s.steps), grid=s.grid,
                guidance_scale=float(spec.config.guidance.scale), cost=cost, rows=rows)


def _within(result: dict, tolerance: float = 0.1) -> dict:
    """The largest fraction whose FD is within ``tolerance`` (relative) of the large model's."""
    rows = result["rows"]
    base = next((r for r in rows if r["fraction"] == 0.0), rows[0])
    return max((r for r in rows if r["fd"] <= (1 + tolerance) * base["fd"]),
               key=lambda r: r["fraction"])


def ours(result: dict) -> str:
    """The paper's fraction (0.4, or the nearest measured) beside both models alone."""
    rows = result["rows"]
    base = next((r for r in rows if r["fraction"] == 0.0), rows[0])
    small = next((r for r in rows if r["fraction"] == 1.0), rows[-1])
    mid = min(rows, key=lambda r: abs(r["fraction"] - 0.4))
    kept = _within(result)
    c = result["cost"]
    ratio = c["large"]["flops_per_call"] / c["small"]["flops_per_call"]
    shallow = ("; on this task the small model alone is within 10% of the large one's FD, so "
               "the quality cost of stitching is small at every fraction"
               if kept["fraction"] == 1.0 else
               f"; the largest fraction within 10% of the large model's FD is "
               f"{kept['fraction']:g} ({kept['speedup']:.2f}x)")
    return (f"MNIST-5k U-Nets {ratio:.1f}x apart in FLOPs ({result['train_steps']} steps each): "
            f"the small model on the first {mid['fraction']:g} of the steps gives FD "
            f"{mid['fd']:.2f} (large alone {base['fd']:.2f}, small alone {small['fd']:.2f}), "
            f"accuracy {mid['accuracy']:.3f} ({base['accuracy']:.3f} / {small['accuracy']:.3f}) "
            f"at {mid['speedup']:.2f}x measured wall time ({mid['flops_ratio']:.2f}x fewer FLOPs)"
            + shallow)


def markdown(result: dict) -> str:
    c = result["cost"]
    lines = ["Implementation: `jaxdiff/combine/tstitch.py` (the stitched Denoiser, "
             "`config.stitch`); identities: `tests/test_tstitch.py`, "
             "`tests/test_sample_job.py`.", "",
             f"- Models: `{result['large_config']}` (large) and `{result['small_config']}` "
             f"(small), each trained for {result['train_steps']} steps, EMA parameters.",
             f"- Sampling: {result['sampler']} {result['steps']} steps on the {result['grid']} "
             f"grid, CFG {result['guidance_scale']:g} (2 network calls per solver step); the "
             "small model takes the first fraction of the steps.",
             f"- Network cost per call and sample: small "
             f"{c['small']['flops_per_call'] / 1e6:.1f} MFLOPs, large "
             f"{c['large']['flops_per_call'] / 1e6:.1f} MFLOPs (XLA cost analysis); measured "
             f"on a batch of {BATCH}: small {1e3 * c['small']['seconds_per_call']:.0f} ms, large "
             f"{1e3 * c['large']['seconds_per_call']:.0f} ms per call.",
             "- Scores: own-feature FD and class accuracy in the pinned feature space against "
             "the 1,000 held-out images; wall time of the sampling calls after a warm-up call.",
             "",
             "| small-model fraction | steps small / large | GFLOPs per sample | FD | accuracy "
             "| precision | recall | s / 1000 samples | speed-up (wall) | FLOPs ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['fraction']:g} | {r['nfe_small']} / {r['nfe_large']} | "
                     f"{r['gflops_per_sample']:.2f} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['seconds_per_1000']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['flops_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot([r["fraction"] for r in rows], [r["fd"] for r in rows], "o-", label="FD")
    a.set_xlabel("fraction of the steps on the small model")
    a.set_ylabel("own-feature FD (pinned)")
    a2 = a.twinx()
    a2.plot([r["fraction"] for r in rows], [r["accuracy"] for r in rows], "s--", color="C1",
            label="accuracy")
    a2.set_ylabel("class accuracy")
    a.set_title("Quality per stitching fraction")
    b.plot([r["speedup"] for r in rows], [r["fd"] for r in rows], "o-")
    for r in rows:
        b.annotate(f"{r['fraction']:g}", (r["speedup"], r["fd"]), fontsize=8)
    b.set_xlabel("sampling speed-up (measured wall time)")
    b.set_ylabel("own-feature FD")
    b.set_title("Quality vs speed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPRODUCTIONS.register("tstitch_mnist5k", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=plot,
    add_args=add_args, check=check, stages=stages,
    needs="trains both models if their workdirs are missing (the large one is the README's "
          "main job)",
    summary="FD / accuracy / FLOPs / wall time per fraction of the steps on a small U-Net"))
