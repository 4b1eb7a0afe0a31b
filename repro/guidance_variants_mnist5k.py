"""Autoguidance (Karras et al., NeurIPS 2024) and APG (Sadat et al., arXiv 2410.02416) against
CFG on the README's MNIST-5k model, at equal network calls: own-feature FD, precision, recall
and class accuracy per guidance scale.

Protocol: the trained workdir of ``configs/mnist5k.py`` (EMA parameters), DDIM (eta = 0) 15
steps on the uniform-t grid; every guided setting costs 2 network calls per step (CFG and APG:
the conditional and unconditional branches in one batched call; autoguidance: the good and the
bad model), the unguided conditional model 1.  Autoguidance's bad model is an earlier
checkpoint of the same run (``--bad-step``, default 1,500 of the 2,400 steps, the oldest the run
keeps (the docs' earlier rows used 1,000 of a 1,800-step run): "a shorter-trained
version of itself", the cheapest bad model the paper's ablation allows; its bad models are also
smaller).  APG at its defaults: eta = 0 (parallel part dropped), no norm threshold; and with the
paper's momentum (``--momentum``, beta = -0.5 by default: the running update carried by the
sampler from step to step).  Scores in the pinned feature space against the 1,000 held-out
images.

  jaxdiff reproduce guidance_variants_mnist5k --workdir runs/mnist5k   # ~20 min on 2 cores
  jaxdiff reproduce guidance_variants_mnist5k --quick                  # one scale each, 250
"""
from __future__ import annotations

import os

from jaxdiff.reproduce import (REPRODUCTIONS, Paper, Reproduction, check_trained_workdir,
                               guided_scores, trained_model)

PAPER = Paper("Guiding a Diffusion Model with a Bad Version of Itself", "Karras et al.",
              "NeurIPS 2024")
CLAIM = ("Guiding a model with a shorter-trained / smaller version of itself "
         "(D_bad + s (D_good - D_bad)) improves quality without the loss of variation CFG "
         "brings (ImageNet 512 FID 1.25 with EDM2-S, against CFG's 1.81).  APG (Sadat et al.) "
         "claims that dropping CFG's update component parallel to the conditional prediction "
         "removes the oversaturation of high scales at a similar FID and precision.")
DEFAULT_CONFIG = os.path.join("configs", "mnist5k.py")
DEFAULT_WORKDIR = os.path.join("runs", "mnist5k")
BATCH = 250
STEPS = 15
NAMES = {"none": "conditional, unguided", "cfg": "CFG", "apg": "APG (eta = 0)",
         "apg_momentum": "APG (eta = 0) with momentum", "autoguidance": "autoguidance"}


def add_args(p) -> None:
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help="the trained mnist5k workdir (default: %(default)s)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="default: %(default)s")
    p.add_argument("--bad-step", type=int, default=1500,
                   help="the checkpoint of the same run that serves as the bad model")
    p.add_argument("--cfg-scales", default="1.65,3")
    p.add_argument("--apg-scales", default="1.65,3,5")
    p.add_argument("--apg-momentum-scales", default="3,5")
    p.add_argument("--momentum", type=float, default=-0.5,
                   help="APG's momentum beta for the apg_momentum rows (default: %(default)s)")
    p.add_argument("--auto-scales", default="1.5,2.5")
    p.add_argument("--samples", type=int, default=500, help="samples per setting")


def _plan(args) -> tuple[list[tuple[str, float]], int]:
    if args.quick:
        return [("none", 1.0), ("cfg", 3.0), ("apg", 3.0), ("apg_momentum", 3.0),
                ("autoguidance", 2.0)], BATCH
    rows = [("none", 1.0)]
    for name, scales in (("cfg", args.cfg_scales), ("apg", args.apg_scales),
                         ("apg_momentum", args.apg_momentum_scales),
                         ("autoguidance", args.auto_scales)):
        rows += [(name, float(s)) for s in scales.split(",")]
    return rows, args.samples


def stages(args) -> list[str]:
    return [f"{n} {s:g}" for n, s in _plan(args)[0]]


def check(args) -> None:
    check_trained_workdir(args.workdir, args.config, step=args.bad_step)


def run(args, progress) -> dict:
    check(args)
    from jaxdiff.guidance import guidance_config

    _, spec, params, step = trained_model(args.workdir, args.config, "ddim", STEPS, "uniform_t")
    plan, samples = _plan(args)
    rows = []
    for name, scale in plan:
        with progress.stage(f"{name} {scale:g}"):
            fields = {"autoguidance": dict(bad_workdir=args.workdir, bad_step=args.bad_step),
                      "apg_momentum": dict(momentum=args.momentum)}.get(name, {})
            section = guidance_config(name.replace("_momentum", ""), **(
                {} if name == "none" else dict(scale=scale, **fields)))
            scores = guided_scores(spec, params, section, samples, BATCH)
            calls = 1 if name == "none" else 2
            rows.append(dict(method=name, scale=scale, network_calls=calls * STEPS, **scores))
    return dict(config=args.config, train_steps=step, bad_step=args.bad_step, steps=STEPS,
                momentum=args.momentum, rows=rows)


def _best(result: dict, method: str) -> dict:
    return min((r for r in result["rows"] if r["method"] == method), key=lambda r: r["fd"])


def ours(result: dict) -> str:
    parts = []
    for m in ("cfg", "apg", "apg_momentum", "autoguidance"):
        if not any(r["method"] == m for r in result["rows"]):
            continue
        b = _best(result, m)
        parts.append(f"{NAMES[m]} FD {b['fd']:.2f} at s = {b['scale']:g} (precision "
                     f"{b['precision']:.2f}, recall {b['recall']:.2f}, accuracy "
                     f"{b['accuracy']:.3f})")
    none = next(r for r in result["rows"] if r["method"] == "none")
    return (f"MNIST-5k, DDIM {result['steps']}, 30 network calls each, bad model = step "
            f"{result['bad_step']} of {result['train_steps']}: best " + "; ".join(parts)
            + f"; unguided FD {none['fd']:.2f} (accuracy {none['accuracy']:.3f})")


def markdown(result: dict) -> str:
    lines = ["Implementation: `jaxdiff/guidance/autoguidance.py`, `jaxdiff/guidance/apg.py`, "
             "`jaxdiff/guidance/cfg.py`; identities in `tests/test_guidance_methods.py`; "
             "`docs/guidance.md`.", "",
             f"- Model: `{result['config']}` trained for {result['train_steps']} steps, EMA "
             f"parameters; autoguidance's bad model: the same run's checkpoint "
             f"{result['bad_step']}.  DDIM (eta = 0) {result['steps']} steps on the uniform-t "
             f"grid.  APG's momentum: beta = {result.get('momentum', -0.5):g}.",
             "- Scores: own-feature FD, class accuracy, precision and recall in the pinned "
             "feature space against the 1,000 held-out images.", "",
             "| guidance | scale | network calls | samples | FD | accuracy | precision | "
             "recall |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {NAMES[r['method']]} | {r['scale']:g} | {r['network_calls']} | "
                     f"{r['samples']} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in ("cfg", "apg", "apg_momentum", "autoguidance"):
        rows = sorted((r for r in result["rows"] if r["method"] == method),
                      key=lambda r: r["scale"])
        a.plot([r["scale"] for r in rows], [r["fd"] for r in rows], "o-", label=NAMES[method])
        b.plot([r["recall"] for r in rows], [r["precision"] for r in rows], "o-",
               label=NAMES[method])
        for r in rows:
            b.annotate(f"{r['scale']:g}", (r["recall"], r["precision"]), fontsize=8)
    none = next(r for r in result["rows"] if r["method"] == "none")
    a.axhline(none["fd"], color="k", linestyle=":", label=NAMES["none"])
    b.plot([none["recall"]], [none["precision"]], "k*", markersize=10, label=NAMES["none"])
    a.set_xlabel("guidance scale s")
    a.set_ylabel("own-feature FD (pinned)")
    a.legend(fontsize=8)
    b.set_xlabel("recall")
    b.set_ylabel("precision")
    b.set_title("30 network calls per sample (guided)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPRODUCTIONS.register("guidance_variants_mnist5k", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=plot,
    add_args=add_args, check=check, stages=stages,
    needs="a trained configs/mnist5k.py workdir with its checkpoint 1500 (the README's main job)",
    summary="FD / precision / recall per scale: autoguidance and APG against CFG at equal "
            "network calls on MNIST-5k"))
