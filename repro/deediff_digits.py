"""DeeDiff early exit (Tang et al. 2023) on the embedded 8x8 digits: quality and sampling wall
time per exit threshold, on one model trained with the DeeDiff loss.

Protocol: ``configs/digits_deediff.py`` (a DiT with 8 blocks and an exit after each of the first
7, trained with ``objective.name='deediff'``) is trained by the command line's
``--mode=train`` into the workdir (resumed if it is there), once per uncertainty space in
``--spaces``: 'output' is the paper's uncertainty target (the exit's error on the network
output, eps here), 'x0' the exit's error on the data prediction (into WORKDIR_x0; see
``jaxdiff/objectives/deediff.py``).  Then, in this process, for every model and every
threshold in ``--thresholds``: the run's own sampling path (``RunSpec.guided`` with
``sample.exit_threshold``: CFG 2 around the early-exit denoiser, DDIM 25 steps, the
conditional and null branch in one batch) draws ``--samples`` class-balanced images, timed
after a warm-up call, and the evaluation's own-feature FD and class accuracy score them
against the held-out split.  Threshold 0 is the full network.  The exit profile says where
the batch leaves the network: at each of the sampler's 25 times, the (conditional, null) batch
of 2 x 250 held-out digits noised to that time goes through the exit rule, which reports the
blocks the batch ran and each example's exit block.

  jaxdiff reproduce deediff_digits            # ~25 min on 2 cores (two models)
  jaxdiff reproduce deediff_digits --quick    # 600 training steps, 2 thresholds, 200 samples
  jaxdiff reproduce deediff_digits --spaces=output     # the paper's target alone
"""
from __future__ import annotations

import dataclasses
import os

from jaxdiff.reproduce import (REPRODUCTIONS, MissingPrerequisite, Paper, Reproduction,
                               run_command_line, timed_class_balanced_samples)

PAPER = Paper("DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating Diffusion "
              "Model Generation", "Tang et al.", "arXiv 2309.17074 (2023)")
CLAIM = ("A timestep-aware uncertainty module after each layer and an uncertainty-aware "
         "layer-wise loss let each sampling step leave the network early with results "
         "comparable to the full-layer model (abstract; the paper's tables report large layer "
         "reductions on CIFAR-10 / CelebA at a small FID change; their figures are not "
         "checked here).")
DEFAULT_CONFIG = os.path.join("configs", "digits_deediff.py")
DEFAULT_WORKDIR = os.path.join("runs", "digits_deediff")
BATCH = 250
QUICK_STEPS = 600  # --quick: training steps (into WORKDIR_quick)


def add_args(p) -> None:
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="default: %(default)s")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="default: %(default)s")
    p.add_argument("--thresholds", default="0,0.02,0.05,0.1,0.2,0.3")
    p.add_argument("--samples", type=int, default=1000, help="samples per threshold")
    p.add_argument("--spaces", default="output,x0",
                   help="uncertainty spaces to train and compare (default: %(default)s)")


def _spaces(args) -> list[str]:
    from jaxdiff.objectives.deediff import UNCERTAINTY_SPACES

    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    bad = [s for s in spaces if s not in UNCERTAINTY_SPACES]
    if bad or not spaces:
        raise ValueError(f"--spaces: each must be one of {UNCERTAINTY_SPACES}, got "
                         f"{args.spaces!r}")
    return spaces


def _workdir(workdir: str, space: str) -> str:
    return workdir if space == "output" else f"{workdir}_{space}"


def _plan(args) -> tuple[list[float], int, str, list[str]]:
    """(thresholds, samples, workdir, extra training flags)."""
    if args.quick:
        return ([0.0, 0.1], 200, args.workdir + "_quick",
                [f"--config.train.num_steps={QUICK_STEPS}"])
    return ([float(t) for t in args.thresholds.split(",")], args.samples, args.workdir, [])


def stages(args) -> list[str]:
    thresholds, *_ = _plan(args)
    out = []
    for space in _spaces(args):
        out += ([f"train ({space})"] + [f"threshold {t:g} ({space})" for t in thresholds]
                + [f"exit profile ({space})"])
    return out


def check(args) -> None:
    if not os.path.exists(args.config):
        raise MissingPrerequisite(f"no config {args.config}: run from the repository root")
    _spaces(args)


def train(args, workdir: str, space: str, flags: list[str]) -> None:
    run_command_line([f"--config={args.config}", f"--workdir={workdir}", "--mode=train",
                      "--config.train.progress_bar=False",
                      f"--config.objective.uncertainty_space={space}", *flags])


def _with_threshold(spec, threshold: float):
    config = spec.config.copy_and_resolve_references()
    config.sample.exit_threshold = float(threshold)
    return dataclasses.replace(spec, config=config)


def sample_and_score(spec, params, threshold: float, samples: int) -> dict:
    """The run's sampling path at ``threshold``: wall time (after a warm-up call) and scores."""
    den = _with_threshold(spec, threshold).guided(params)
    return dict(threshold=threshold, **timed_class_balanced_samples(spec, den, samples, BATCH))


def exit_profile(spec, params, thresholds: list[float]) -> dict:
    """Per sampler time: blocks the (conditional, null) batch runs, and the mean exit block of
    its examples, on held-out digits noised to that time."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxdiff.data import get_source
    from jaxdiff.models import early_exit as E
    from jaxdiff.schedules import diffuse, sampling_grid

    s = spec.config.sample
    heldout = get_source(spec.config.data, "heldout")
    x0, labels = heldout.get(np.arange(BATCH))
    x0 = jnp.asarray(x0)
    grid = sampling_grid(spec.schedule, int(s.steps), s.grid)
    times = np.asarray(grid.t[:-1] if grid.clean_end else grid.t)
    net = nnx.merge(spec.graphdef, params)
    cond = jnp.concatenate([jnp.asarray(labels, jnp.int32),
                            jnp.full((BATCH,), spec.null, jnp.int32)])

    @jax.jit
    def one(t, threshold, key):
        tb = jnp.full((BATCH,), t)
        x_t = diffuse(spec.schedule, x0, tb, jax.random.normal(key, x0.shape))
        x_in, c_noise = spec.denoiser(params).network_inputs(x_t, tb)
        _, exit_stage, run = E.early_exit(net, jnp.concatenate([x_in, x_in]),
                                          jnp.concatenate([c_noise, c_noise]), cond, threshold)
        return run, jnp.mean(exit_stage.astype(jnp.float32) + 1.0)

    rows = {}
    for threshold in thresholds:
        runs, means = [], []
        for i, t in enumerate(times):
            run, mean = one(jnp.float32(t), jnp.float32(threshold), jax.random.key(i))
            runs.append(int(run))
            means.append(float(mean))
        rows[f"{threshold:g}"] = dict(blocks_run=runs, mean_exit_block=means,
                                      blocks_run_mean=float(np.mean(runs)),
                                      per_example_mean=float(np.mean(means)))
    return dict(times=[float(t) for t in times], blocks=net.num_stages, rows=rows)


def one_model(args, progress, space: str) -> dict:
    """Trains (or resumes) the model of uncertainty space ``space`` and measures every
    threshold on it."""
    thresholds, samples, workdir, flags = _plan(args)
    workdir = _workdir(workdir, space)
    with progress.stage(f"train ({space})"):
        train(args, workdir, space, flags)
    from jaxdiff.config import load_config_file
    from jaxdiff.jobs.spec import restore_model, spec_for_data

    config = load_config_file(args.config)
    config.objective.uncertainty_space = space
    if args.quick:
        config.train.num_steps = QUICK_STEPS
    spec, _ = spec_for_data(config)
    params, step = restore_model(spec, workdir)
    rows = []
    for threshold in thresholds:
        with progress.stage(f"threshold {threshold:g} ({space})"):
            rows.append(sample_and_score(spec, params, threshold, samples))
    with progress.stage(f"exit profile ({space})"):
        profile = exit_profile(spec, params, thresholds)
    base = rows[0]["seconds_per_1000"]
    for r in rows:
        r["speedup"] = base / r["seconds_per_1000"]
        p = profile["rows"][f"{r['threshold']:g}"]
        r["blocks_run_mean"] = p["blocks_run_mean"]
        r["per_example_mean"] = p["per_example_mean"]
    return dict(space=space, workdir=workdir, train_steps=step, blocks=profile["blocks"],
                rows=rows, profile=profile)


def run(args, progress) -> dict:
    check(args)
    return dict(config=args.config,
                models=[one_model(args, progress, space) for space in _spaces(args)])


def _say_model(model: dict) -> str:
    """The full network beside the largest threshold that keeps FD within 10% and the largest
    threshold measured: what exiting saved, and what it cost."""
    rows = model["rows"]
    full = rows[0]
    kept = max((r for r in rows if r["fd"] <= 1.1 * full["fd"]), key=lambda r: r["threshold"])
    last = rows[-1]

    def say(r):
        return (f"threshold {r['threshold']:g}: FD {r['fd']:.1f}, accuracy {r['accuracy']:.2f}, "
                f"{r['blocks_run_mean']:.1f} of {model['blocks']} blocks per call, "
                f"{r['speedup']:.2f}x wall time")

    verdict = ("the exits save wall time at a kept FD" if kept["speedup"] > 1.05 else
               "the exits cost quality before they save time")
    parts = [say(kept)] + ([say(last)] if last is not kept else [])
    return (f"uncertainty on the {model['space']} ({model['train_steps']} steps): full network "
            f"FD {full['fd']:.1f}, accuracy {full['accuracy']:.2f}; " + "; ".join(parts)
            + f": {verdict}")


def ours(result: dict) -> str:
    return "digits DiT; " + " | ".join(_say_model(m) for m in result["models"])


def markdown(result: dict) -> str:
    lines = ["Implementation: `jaxdiff/models/early_exit.py` (exit and uncertainty heads, the "
             "batched exit rule), `jaxdiff/objectives/deediff.py` (the loss); identities: "
             "`tests/test_early_exit.py`; the mechanism's wall time on larger networks: "
             "`docs/performance.md`, section \"Early exit\".", "",
             f"- Models: `{result['config']}` (a DiT with {result['models'][0]['blocks']} "
             "blocks) trained once per uncertainty space (" + ", ".join(
                 f"{m['space']}: {m['train_steps']} steps in `{m['workdir']}`"
                 for m in result["models"]) + "), EMA parameters, DDIM 25 steps, CFG 2 (the "
             "conditional and null branch in one batch of 500).",
             "- Uncertainty space: 'output' is the paper's target (tanh of the exit's mean "
             "absolute error on the network output, eps here); 'x0' the same on the data "
             "prediction, (sigma/alpha) times larger for an eps network.",
             "- Scores: own-feature FD and class accuracy against the held-out split; wall "
             "time of the sampling calls after a warm-up call.",
             "- Blocks per call: what the batch ran, averaged over the sampler's 25 times (exit "
             "profile on noised held-out digits); per example: the mean exit block, what a "
             "batch-compacting implementation would pay.", "",
             "| space | threshold | FD | accuracy | precision | recall | s / 1000 samples | "
             "speed-up | blocks per call (batch) | per example |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["models"]:
        for r in m["rows"]:
            lines.append(f"| {m['space']} | {r['threshold']:g} | {r['fd']:.3f} | "
                         f"{r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['seconds_per_1000']:.1f} | {r['speedup']:.2f}x | "
                         f"{r['blocks_run_mean']:.2f} | {r['per_example_mean']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(5 * (len(models) + 1), 3.8))
    for a, m in zip(axes, models):
        prof = m["profile"]
        for key, row in prof["rows"].items():
            a.plot(prof["times"], row["blocks_run"], "o-", ms=3, label=f"threshold {key}")
        a.set_xlabel("sampler time t (1 = noise)")
        a.set_ylabel("blocks the batch runs")
        a.set_title(f"Exit profile, uncertainty on the {m['space']}")
        a.legend(fontsize=8)
    b = axes[-1]
    for m in models:
        rows = m["rows"]
        b.plot([r["speedup"] for r in rows], [r["fd"] for r in rows], "o-", label=m["space"])
        for r in rows:
            b.annotate(f"{r['threshold']:g}", (r["speedup"], r["fd"]), fontsize=8)
    b.legend(fontsize=8)
    b.set_xlabel("sampling speed-up (wall time)")
    b.set_ylabel("own-feature FD")
    b.set_title("Quality vs speed per threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPRODUCTIONS.register("deediff_digits", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=plot,
    add_args=add_args, check=check, stages=stages,
    summary="FD / accuracy / sampling wall time per exit threshold of DiTs trained with the "
            "DeeDiff loss on digits (uncertainty on the network output, as the paper, and on "
            "x0)"))
