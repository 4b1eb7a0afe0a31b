"""Steered Diffusion (Nair et al., ICCV 2023) on MNIST-5k: inpainting and super-resolution of
held-out digits by the README model's unconditional half, against the unsteered model and the
number of re-noising passes.

Protocol: the trained workdir of ``configs/mnist5k.py`` (EMA parameters) at its null condition;
``--images`` held-out digits evenly strided through the split, each measured once
(y = A(x), no noise) and steered towards its own measurement (``Steered`` with y of shape
(B, *measurement)); DDIM (eta = 0) 20 steps on the uniform-logSNR grid (on the uniform-t grid
the first step multiplies the steering shift by about 180 and ruins the samples;
``docs/guidance.md``); the paper's gradient rule through the denoiser, l2 loss.  Tasks:
inpainting with the lower half hidden, 2x and 4x super-resolution (average pooling).  Scores:
RMS residual of A(sample) to y over the measured values, PSNR of the clipped sample to the true
digit, RMS error on the hidden half (inpainting), and own-feature FD of the samples against the
held-out split in the pinned feature space (with a few hundred samples FD is biased upwards:
compare within the table).

  jaxdiff reproduce steered_mnist5k --workdir runs/mnist5k     # ~10 min on 2 cores
  jaxdiff reproduce steered_mnist5k --quick                    # 50 digits, inpainting only
"""
from __future__ import annotations

import os
import time

from jaxdiff.reproduce import (REPRODUCTIONS, Paper, Reproduction, check_trained_workdir,
                               trained_model)

PAPER = Paper("Steered Diffusion: A Generalized Framework for Plug-and-Play Conditional Image "
              "Synthesis", "Nair et al.", "ICCV 2023")
CLAIM = ("An unconditional diffusion model steered by the gradient of a loss between a "
         "measurement and a degradation of its clean estimate, with a re-noising loop, performs "
         "inpainting, colourisation and super-resolution without retraining (faces; no "
         "MNIST number).")
DEFAULT_CONFIG = os.path.join("configs", "mnist5k.py")
DEFAULT_WORKDIR = os.path.join("runs", "mnist5k")
STEPS = 20
GRID = "uniform_logsnr"
SCALE = 3.0
TASKS = ("inpaint", "sr2", "sr4")


def add_args(p) -> None:
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help="the trained mnist5k workdir (default: %(default)s)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="default: %(default)s")
    p.add_argument("--images", type=int, default=100, help="held-out digits per setting")
    p.add_argument("--scale", type=float, default=SCALE, help="steering scale s")
    p.add_argument("--passes", default="1,2", help="re-noising passes N per step")


def _plan(args):
    if args.quick:
        return [("none", 0.0, 1), ("inpaint", args.scale, 1), ("inpaint", args.scale, 2)], 50
    passes = [int(n) for n in args.passes.split(",")]
    plan = [("none", 0.0, 1)]
    for task in TASKS:
        plan += [(task, args.scale, n) for n in (passes if task == "inpaint" else passes[:1])]
    return plan, args.images


def stages(args) -> list[str]:
    return [f"{t} s={s:g} N={n}" for t, s, n in _plan(args)[0]]


def check(args) -> None:
    check_trained_workdir(args.workdir, args.config)


def _operator(task: str, shape):
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff.guidance import operators as O

    if task in ("none", "inpaint"):
        mask = np.ones(shape, np.float32)
        mask[shape[0] // 2:] = 0.0
        return O.Inpaint(jnp.asarray(mask))
    return O.AvgPool(int(task[2:]))


def run(args, progress) -> dict:
    check(args)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff import samplers
    from jaxdiff.data import get_source
    from jaxdiff.guidance import NullCondition, Steered
    from jaxdiff.images import to_uint8
    from jaxdiff.jobs.classify import heldout_subset
    from jaxdiff.jobs.evaluate import own_feature_metrics

    config, spec, params, step = trained_model(args.workdir, args.config, "ddim", STEPS, GRID)
    source = get_source(config.data, "heldout")
    plan, n = _plan(args)
    idx = heldout_subset(n, len(source))
    images, labels = source.get(idx)
    x = jnp.asarray(images, jnp.float32)
    den = NullCondition(spec.denoiser(params), spec.null)
    cond = jnp.zeros((len(idx),), jnp.int32)
    rows = []
    for task, scale, passes in plan:
        with progress.stage(f"{task} s={scale:g} N={passes}"):
            op = _operator(task, spec.example_shape)
            y = op(x)
            steered = Steered(den, op, y, scale=scale)
            t0 = time.perf_counter()
            out = samplers.sample(steered, jax.random.key(0), x.shape, sampler="ddim",
                                  steps=STEPS, grid=GRID, cond=cond, resample=passes).x0
            out = jnp.clip(jax.block_until_ready(out), -1.0, 1.0)
            seconds = time.perf_counter() - t0
            a_out = op(out)
            residual = float(jnp.sqrt(jnp.mean((a_out - y) ** 2)))
            mse = jnp.mean(((out - x) / 2.0) ** 2, axis=tuple(range(1, x.ndim)))
            psnr = float(jnp.mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-10))))
            row = dict(task=task, scale=scale, passes=passes, residual=residual, psnr=psnr,
                       nfe=STEPS * passes, seconds=seconds)
            if task in ("none", "inpaint"):
                hidden = (1.0 - op.mask)
                row["hidden_rms"] = float(jnp.sqrt(jnp.sum(((out - x) * hidden) ** 2)
                                                   / (jnp.sum(hidden) * len(idx))))
            own = own_feature_metrics(config, to_uint8(np.asarray(out)), labels)
            row.update(fd=own["own_features"]["fd"], accuracy=own["class_accuracy"])
            rows.append(row)
    return dict(config=args.config, train_steps=step, steps=STEPS, grid=GRID, images=int(n),
                rows=rows)


def ours(result: dict) -> str:
    base = next(r for r in result["rows"] if r["task"] == "none")
    parts = []
    for task in TASKS:
        for r in (r for r in result["rows"] if r["task"] == task):
            parts.append(f"{task} N = {r['passes']}: residual {r['residual']:.3f}, PSNR "
                         f"{r['psnr']:.1f} dB, FD {r['fd']:.1f}")
    return (f"MNIST-5k, {result['images']} held-out digits, the README model's unconditional "
            f"half, DDIM {result['steps']} ({result['grid']}): unsteered (scored against the "
            f"inpainting measurement) residual {base['residual']:.3f}, PSNR {base['psnr']:.1f} "
            f"dB, FD {base['fd']:.1f}; " + "; ".join(parts))


def markdown(result: dict) -> str:
    lines = ["Implementation: `jaxdiff/guidance/steered.py` (`guidance.name = steered`), "
             "operators in `jaxdiff/guidance/operators.py`, the re-noising loop as the sampler "
             "option `resample`; identities and the exact-posterior check: "
             "`tests/test_steered.py`; `docs/guidance.md`, section Steered Diffusion.", "",
             f"- Model: `{result['config']}` trained for {result['train_steps']} steps, EMA "
             f"parameters, at its null condition; DDIM (eta = 0) {result['steps']} steps on the "
             f"{result['grid']} grid; {result['images']} held-out digits, each steered towards "
             "its own measurement.",
             "- Residual: RMS of A(sample) - y over the measured values; PSNR of the clipped "
             "sample to the true digit; hidden RMS: the error on the hidden half (inpainting); "
             "FD and class accuracy in the pinned feature space (few samples: FD biased "
             "upwards, compare within the table).", "",
             "| task | s | passes N | network calls | residual | PSNR (dB) | hidden RMS | FD | "
             "accuracy | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        name = "unsteered (inpainting mask)" if r["task"] == "none" else r["task"]
        hidden = f"{r['hidden_rms']:.3f}" if "hidden_rms" in r else "-"
        lines.append(f"| {name} | {r['scale']:g} | {r['passes']} | {r['nfe']} | "
                     f"{r['residual']:.3f} | {r['psnr']:.1f} | {hidden} | {r['fd']:.1f} | "
                     f"{r['accuracy']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


REPRODUCTIONS.register("steered_mnist5k", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=None,
    add_args=add_args, check=check, stages=stages,
    needs="a trained configs/mnist5k.py workdir (the README's main job)",
    summary="residual / PSNR / FD of steered inpainting and 2x / 4x super-resolution of "
            "held-out MNIST-5k digits against the unsteered model and the re-noising passes"))
