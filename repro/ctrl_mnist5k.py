"""CTRL on MNIST-5k (Zhao et al., ICLR 2025): the README model's unconditional half given the
class back by RL fine-tuning, swept over the KL weight alpha: class accuracy and own-feature FD
of the fine-tuned model's samples, with the reward and the KL it reached.

Protocol: the pretrained model is the README's ``configs/mnist5k.py`` workdir (trained by the
command line's ``--mode=train`` if it is missing) at its null condition: the unconditional
model its 10% condition dropout trained.  For each alpha, ``configs/mnist5k_ctrl.py``
fine-tunes it (``--mode=distill``; a finished run returns at once): 8 rollouts per step of the
10-step DDPM chain on the uniform-logSNR grid, the reward log p(c | x0) of the pinned feature
network, the KL of the chain to the pretrained one, gradients through every step.  Every
model is then sampled with that chain, ``--samples`` class-balanced samples, scored in the
pinned feature space against the 1,000 held-out images.  The pinned network is both the
reward and the judge of accuracy (as in the paper, whose reward classifiers also score its
results), so FD says whether the samples stay like the data.  References on the same chain:
the pretrained model unconditional (no control) and the README model's own class-conditional
half (what conditional training on labelled data gives).  The reward and KL columns are the
objective's own, on 64 fresh rollouts of the final model.

  jaxdiff reproduce ctrl_mnist5k        # ~20 min on 2 cores, plus the README model if missing
  jaxdiff reproduce ctrl_mnist5k --quick   # 10 steps per alpha, 200 samples
"""
from __future__ import annotations

import os

from jaxdiff.reproduce import (REPRODUCTIONS, Paper, Reproduction, require_files, run_command_line,
                               timed_class_balanced_samples, training_cost)

PAPER = Paper("Adding Conditional Control to Diffusion Models with Reinforcement Learning",
              "Zhao, Uehara, Scalia, Kung, Biancalani, Levine & Hajiramezanali",
              "ICLR 2025 (arXiv 2406.12120)")
CLAIM = ("RL fine-tuning of a pretrained diffusion model with a classifier's log-probability "
         "as reward and a KL to the pretrained model samples p(x | c) ∝ p_pre(x) p(c | x) "
         "(Theorem 1), without a noisy classifier or conditional training data; on Stable "
         "Diffusion it conditions on compressibility / aesthetic classes more accurately than "
         "classifier guidance and reconstruction guidance (Tables 1-3; no MNIST number).")
PRETRAINED_CONFIG = os.path.join("configs", "mnist5k.py")
CTRL_CONFIG = os.path.join("configs", "mnist5k_ctrl.py")
ALPHAS = (0.1, 1.0, 10.0)
BATCH = 250


def add_args(p) -> None:
    p.add_argument("--workdir", default=os.path.join("runs", "mnist5k"),
                   help="the pretrained model's workdir (default: %(default)s)")
    p.add_argument("--samples", type=int, default=500, help="samples per row")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps per alpha")


def _plan(args) -> dict:
    base = args.workdir + ("_quick" if args.quick else "")
    steps = 10 if args.quick else args.steps
    return dict(pretrained=base, steps=steps, samples=200 if args.quick else args.samples,
                runs={a: f"{base}_ctrl_alpha{a:g}_steps{steps}" for a in ALPHAS},
                flags=["--config.train.num_steps=30"] if args.quick else [])


def stages(args) -> list[str]:
    return (["pretrained model"] + [f"fine-tune alpha={a:g}" for a in ALPHAS]
            + ["reference rows", "fine-tuned rows"])


def check(args) -> None:
    del args
    require_files(PRETRAINED_CONFIG, CTRL_CONFIG)


def _ctrl_config(plan, alpha):
    from jaxdiff.config import load_config_file

    return load_config_file(CTRL_CONFIG, {
        "distill.teacher_workdir": plan["pretrained"], "objective.alpha": alpha,
        "train.num_steps": plan["steps"]})


def _objective_metrics(config, spec, params, rollouts: int = 64) -> dict:
    """The objective's reward and KL on ``rollouts`` fresh rollouts of ``params``."""
    import jax
    import jax.numpy as jnp

    from jaxdiff.objectives import build_objective

    objective = build_objective(spec, config)
    extra = objective.init(params, jax.random.key(0))
    labels = jnp.arange(rollouts, dtype=jnp.int32) % spec.num_classes
    batch = dict(label=labels, index=jnp.arange(rollouts, dtype=jnp.int32))
    _, metrics = jax.jit(objective.loss)(params, extra, batch, jax.random.key(12345),
                                         jnp.int32(0))
    return {k: float(v) for k, v in metrics.items()}


def _row(kind, config, workdir, samples, alpha=None, null=False) -> dict:
    """One row: the newest EMA model of ``workdir`` sampled with the CTRL chain of ``config``;
    ``null`` samples its null condition (CFG at scale 0: the unconditional model)."""
    from jaxdiff.guidance import guidance_config
    from jaxdiff.jobs.spec import restore_model, spec_for_data

    spec, _ = spec_for_data(config)
    params, used = restore_model(spec, workdir, None)
    den = spec.guided(params, guidance_config("cfg", scale=0.0) if null else None)
    scores = timed_class_balanced_samples(spec, den, samples, BATCH)
    row = dict(kind=kind, alpha=alpha, checkpoint_step=used, **scores)
    if alpha is not None:
        row.update(_objective_metrics(config, spec, params))
    return row


def run(args, progress) -> dict:
    check(args)
    plan = _plan(args)
    with progress.stage("pretrained model"):
        run_command_line([f"--config={PRETRAINED_CONFIG}", f"--workdir={plan['pretrained']}",
                          "--mode=train", "--config.train.progress_bar=False", *plan["flags"]])
    for alpha in ALPHAS:
        with progress.stage(f"fine-tune alpha={alpha:g}"):
            run_command_line([f"--config={CTRL_CONFIG}", f"--workdir={plan['runs'][alpha]}",
                              "--mode=distill",
                              f"--config.distill.teacher_workdir={plan['pretrained']}",
                              f"--config.objective.alpha={alpha}",
                              f"--config.train.num_steps={plan['steps']}",
                              "--config.train.progress_bar=False"])
    n, rows = plan["samples"], []
    base = _ctrl_config(plan, 1.0)
    with progress.stage("reference rows"):
        rows.append(_row("pretrained, unconditional", base, plan["pretrained"], n, null=True))
        rows.append(_row("pretrained, its conditional half", base, plan["pretrained"], n))
    with progress.stage("fine-tuned rows"):
        for alpha in ALPHAS:
            rows.append(_row("CTRL", _ctrl_config(plan, alpha), plan["runs"][alpha], n,
                             alpha=alpha))
    minutes = {f"{a:g}": training_cost(plan["runs"][a])[1] for a in ALPHAS}
    return dict(pretrained_config=PRETRAINED_CONFIG, ctrl_config=CTRL_CONFIG,
                steps=plan["steps"], samples=n, alphas=list(ALPHAS), minutes=minutes,
                rows=rows)


def _ctrl(result, alpha):
    return next(r for r in result["rows"] if r["alpha"] == alpha)


def ours(result: dict) -> str:
    unc = result["rows"][0]
    parts = [f"alpha {a:g}: accuracy {_ctrl(result, a)['accuracy']:.3f}, FD "
             f"{_ctrl(result, a)['fd']:.2f}" for a in result["alphas"]]
    return (f"MNIST-5k, the README model's unconditional half (accuracy {unc['accuracy']:.3f}, "
            f"FD {unc['fd']:.2f}) fine-tuned {result['steps']} steps by CTRL: "
            + "; ".join(parts))


def markdown(result: dict) -> str:
    lines = ["Implementation: `jaxdiff/objectives/ctrl.py` (objective `ctrl`, run by "
             "`--mode=distill`); identities: `tests/test_ctrl.py` (alpha = 1 reaches the exact "
             "class-conditional mixture within the two-sample noise floor, the rollout's "
             "gradient against finite differences, zero KL at the start).", "",
             f"- Pretrained: `{result['pretrained_config']}` at its null condition; fine-tuned: "
             f"`{result['ctrl_config']}`, {result['steps']} steps of 8 rollouts per alpha ("
             + ", ".join(f"alpha {a}: {m:.1f} min" for a, m in result["minutes"].items())
             + " of wall time on this machine, 2 cores); EMA parameters; gradients through "
             "every step of the chain, the class table at 50 times the network's learning "
             "rate (`optim.lr_multipliers`).",
             "- Every row samples the same chain, DDPM with 10 steps on the uniform-logSNR grid, "
             "without guidance.",
             f"- Scores: own-feature FD and class accuracy in the pinned feature space, "
             f"{result['samples']} class-balanced samples per row against the 1,000 held-out "
             "images.  Reward: mean log p(c | x0) of the pinned network; KL: the chain's KL to "
             "the pretrained one (summed over steps and pixels), both on 64 fresh rollouts.", "",
             "| model | alpha | FD | accuracy | precision | recall | reward | KL |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        alpha = "" if r["alpha"] is None else f"{r['alpha']:g}"
        reward = "" if "reward" not in r else f"{r['reward']:.3f}"
        kl = "" if "kl" not in r else f"{r['kl']:.2f}"
        lines.append(f"| {r['kind']} | {alpha} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {reward} | {kl} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    alphas = result["alphas"]
    for ax, key, label in ((a, "accuracy", "class accuracy"), (b, "fd", "own-feature FD")):
        ax.plot(alphas, [_ctrl(result, al)[key] for al in alphas], marker="o", label="CTRL")
        for r, ls in zip(result["rows"][:2], (":", "--")):
            ax.axhline(r[key], ls=ls, color="grey", label=r["kind"])
        ax.set_xscale("log")
        ax.set_xlabel("alpha (KL weight)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"CTRL on MNIST-5k: {result['steps']} fine-tuning steps per alpha")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPRODUCTIONS.register("ctrl_mnist5k", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=plot,
    add_args=add_args, check=check, stages=stages,
    needs="trains the README model if its workdir is missing, and one fine-tuning run per "
          "alpha",
    summary="accuracy / FD / reward / KL of CTRL fine-tuning against the KL weight alpha"))
