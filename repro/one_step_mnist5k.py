"""One- and two-step generators on MNIST-5k: SIM (Luo et al., NeurIPS 2024) and consistency
distillation (Song et al., ICML 2023) against their teacher's Heun-35 sampler, in own-feature
FD, class accuracy, network calls and images per second.

Protocol: the teacher is the README's model (``configs/mnist5k.py``, trained by the command
line's ``--mode=train`` if its workdir is missing), sampled with CFG at the README's scale 1.65.
Both students start from it and have that guided teacher in their targets
(``configs/mnist5k_distill.py:consistency`` and ``:sim``, each one ``--mode=distill`` job; a
finished one returns at once); they are sampled without guidance, one network call per step.
Then, in this process, 1,000 class-balanced samples per row, drawn in batches of 250 and timed
after a warm-up call:

* the teacher with CFG: Heun on the Karras grid at 35 denoiser calls (70 network calls: both
  CFG branches), and DDIM at 1 and 2 steps (what one would do without distilling);
* the consistency model at 1 and 2 steps (multistep consistency sampling);
* the SIM generator (one DDIM step from t_max is one call of the generator).

Scores are in the pinned feature space against the 1,000 held-out images.

  jaxdiff reproduce one_step_mnist5k           # ~45 min on 2 cores (training included)
  jaxdiff reproduce one_step_mnist5k --quick   # 30 steps per student, 250 samples
"""
from __future__ import annotations

import os

from jaxdiff.config import load_config_file as load
from jaxdiff.reproduce import (REPRODUCTIONS, Paper, Reproduction, require_files, run_command_line,
                               timed_class_balanced_samples, training_cost)

PAPER = Paper("One-Step Diffusion Distillation through Score Implicit Matching",
              "Luo, Huang, Geng, Kolter & Qi", "NeurIPS 2024 (arXiv 2410.16794); with "
              "Consistency Models, Song et al., ICML 2023")
CLAIM = ("SIM distils a diffusion model into a one-step generator that reaches CIFAR-10 FID "
         "2.06 (unconditional) and 1.96 (conditional), data-free; consistency distillation "
         "reaches CIFAR-10 FID 3.55 in one step and 2.93 in two (to verify).")
TEACHER_CONFIG = os.path.join("configs", "mnist5k.py")
DISTILL_CONFIG = os.path.join("configs", "mnist5k_distill.py")
METHODS = ("consistency", "sim")
BATCH = 250
QUICK_STEPS = 30


def add_args(p) -> None:
    p.add_argument("--workdir", default=os.path.join("runs", "mnist5k"),
                   help="the teacher's workdir (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.65, help="the teacher's CFG scale")
    p.add_argument("--samples", type=int, default=1000, help="samples per row")


def _plan(args) -> dict:
    base = args.workdir + ("_quick" if args.quick else "")
    return dict(teacher=base, consistency=base + "_cd", sim=base + "_sim",
                samples=250 if args.quick else args.samples,
                flags=[f"--config.train.num_steps={QUICK_STEPS}"] if args.quick else [])


def stages(args) -> list[str]:
    return ["train teacher", "consistency distillation", "SIM", "teacher rows",
            "student rows"]


def check(args) -> None:
    del args
    require_files(TEACHER_CONFIG, DISTILL_CONFIG)


def _row(kind, config, workdir, samples, **sample_fields) -> dict:
    """Samples and scores one row: ``config`` with ``sample_fields`` set on its sample
    section, the newest model of ``workdir``."""
    from jaxdiff.guidance import evals_per_call
    from jaxdiff.jobs.spec import restore_model, spec_for_data

    for k, v in sample_fields.items():
        if k == "scale":
            config.guidance.scale = float(v)
        else:
            config.sample[k] = v
    spec, _ = spec_for_data(config)
    params, used = restore_model(spec, workdir, None)
    scores = timed_class_balanced_samples(spec, spec.guided(params), samples, BATCH)
    return dict(kind=kind, sampler=config.sample.sampler, steps=int(config.sample.steps),
                grid=config.sample.grid, checkpoint_step=used,
                network_calls=evals_per_call(config.guidance) * scores["nfe"],
                images_per_second=1000.0 / scores["seconds_per_1000"], **scores)


def run(args, progress) -> dict:
    check(args)
    plan = _plan(args)
    with progress.stage("train teacher"):
        run_command_line([f"--config={TEACHER_CONFIG}", f"--workdir={plan['teacher']}",
                          "--mode=train", "--config.train.progress_bar=False", *plan["flags"]])
    for method, stage in zip(METHODS, ("consistency distillation", "SIM")):
        with progress.stage(stage):
            run_command_line([f"--config={DISTILL_CONFIG}:{method}",
                              f"--workdir={plan[method]}", "--mode=distill",
                              f"--config.distill.teacher_workdir={plan['teacher']}",
                              f"--config.objective.teacher_scale={args.scale}",
                              "--config.train.progress_bar=False", *plan["flags"]])
    n, rows = plan["samples"], []
    with progress.stage("teacher rows"):
        rows.append(_row("teacher CFG", load(TEACHER_CONFIG), plan["teacher"], n,
                         sampler="heun", grid="karras", steps=18, scale=args.scale))
        for steps in (1, 2):
            rows.append(_row("teacher CFG", load(TEACHER_CONFIG), plan["teacher"], n,
                             sampler="ddim", grid="uniform_t_to_zero", steps=steps,
                             scale=args.scale))
    with progress.stage("student rows"):
        for steps in (1, 2):
            rows.append(_row("consistency distillation", load(f"{DISTILL_CONFIG}:consistency"),
                             plan["consistency"], n, steps=steps))
        rows.append(_row("SIM", load(f"{DISTILL_CONFIG}:sim"), plan["sim"], n))
    costs, minutes = {}, {}
    for method in METHODS:
        costs[method], minutes[method] = training_cost(plan[method])
    return dict(teacher_config=TEACHER_CONFIG, distill_config=DISTILL_CONFIG, scale=args.scale,
                samples=n, distill_steps=costs, distill_minutes=minutes, rows=rows)


def _find(result, kind, steps):
    return next(r for r in result["rows"] if r["kind"] == kind and r["steps"] == steps)


def ours(result: dict) -> str:
    ref = _find(result, "teacher CFG", 18)
    sim = _find(result, "SIM", 1)
    cd1, cd2 = (_find(result, "consistency distillation", s) for s in (1, 2))
    return (f"MNIST-5k, README teacher with CFG {result['scale']:g}, Heun "
            f"({ref['network_calls']} network calls): FD {ref['fd']:.2f}, accuracy "
            f"{ref['accuracy']:.3f}; SIM one step: FD {sim['fd']:.2f}, accuracy "
            f"{sim['accuracy']:.3f} ({sim['images_per_second'] / ref['images_per_second']:.0f}x "
            f"the images per second); consistency distillation 1 / 2 steps: FD {cd1['fd']:.2f}"
            f" / {cd2['fd']:.2f}, accuracy {cd1['accuracy']:.3f} / {cd2['accuracy']:.3f}")


def markdown(result: dict) -> str:
    m, st = result["distill_minutes"], result["distill_steps"]
    lines = ["Implementation: `jaxdiff/distill/sim.py` (objective `sim`, guidance `one_step`), "
             "`jaxdiff/distill/consistency.py` and `jaxdiff/samplers/consistency.py`; "
             "identities: `tests/test_sim.py`, `tests/test_consistency.py`.", "",
             f"- Teacher: `{result['teacher_config']}`, CFG scale {result['scale']:g}; "
             f"students: `{result['distill_config']}` (`:consistency` {st['consistency']} "
             f"steps in {m['consistency']:.1f} min, `:sim` {st['sim']} steps in "
             f"{m['sim']:.1f} min of wall time on this machine, 2 cores); EMA parameters.",
             "- The teacher's rows evaluate both CFG branches per denoiser call (2 network "
             "calls); the students carry the guidance in their weights (1 call).  Wall time of "
             "the sampling calls after a warm-up call, batches of 250.",
             f"- Scores: own-feature FD and class accuracy in the pinned feature space, "
             f"{result['samples']} class-balanced samples per row against the 1,000 held-out "
             "images.", "",
             "| model | sampler | steps | grid | network calls | FD | accuracy | precision | "
             "recall | images / s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['sampler']} | {r['steps']} | {r['grid']} | "
                     f"{r['network_calls']} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['images_per_second']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    markers = {"teacher CFG": "o", "consistency distillation": "s", "SIM": "*"}
    for ax, key, label in ((a, "fd", "own-feature FD"), (b, "accuracy", "class accuracy")):
        for kind, marker in markers.items():
            rows = sorted((r for r in result["rows"] if r["kind"] == kind),
                          key=lambda r: r["network_calls"])
            ax.plot([r["network_calls"] for r in rows], [r[key] for r in rows],
                    marker=marker, ls="-", label=kind, ms=9 if marker == "*" else 6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network calls per sample")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    a.set_yscale("log")
    fig.suptitle(f"One- and two-step generators on MNIST-5k (teacher CFG "
                 f"{result['scale']:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPRODUCTIONS.register("one_step_mnist5k", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=plot,
    add_args=add_args, check=check, stages=stages,
    needs="trains the teacher (the README's main job) and both students if their workdirs "
          "are missing",
    summary="FD / accuracy / images per second: SIM 1 step and consistency 1-2 steps vs the "
            "CFG teacher's Heun-35"))
