"""Guided distillation (Meng et al., CVPR 2023) on MNIST-5k: the README's CFG model against its
guided-distilled students at 16 / 8 / 4 / 2 / 1 steps, in own-feature FD, class accuracy,
network calls and measured sampling wall time per 1,000 images.

Protocol: the teacher is the README's model (``configs/mnist5k.py``, trained by the command
line's ``--mode=train`` if its workdir is missing).  Stage one (``configs/mnist5k_distill.py
:guided``, 800 steps) distils CFG over s in [1, 3] into one network taking s as input; stage
two (``:progressive``, 4 rounds of 300 steps) halves its DDIM steps 16 -> 8 -> 4 -> 2 -> 1.
Both run as ``--mode=distill`` jobs (a finished one returns at once).  Then, in this process,
1,000 class-balanced samples per row, drawn in batches of 250 and timed after a warm-up call:

* the teacher with CFG (two network calls per step): DDIM-50 on the uniform-t grid (the paper's
  reference), and DDIM at 16 / 8 / 4 / 2 / 1 steps on the students' grid (what one would do
  without distilling);
* the stage-one student, DDIM-16 (one call per step);
* each progressive round's student at its own step count;
* the 4- and 1-step students and the teacher's DDIM-50 at the other guidance scales.

All at CFG scale ``--scale`` (default the README's 1.65) unless the row says otherwise; scores
in the pinned feature space against the 1,000 held-out images.

  jaxdiff reproduce guided_distill_mnist5k           # ~45 min on 2 cores (training included)
  jaxdiff reproduce guided_distill_mnist5k --quick   # 100 steps per stage, 250 samples
"""
from __future__ import annotations

import os

from jaxdiff.config import load_config_file as load
from jaxdiff.reproduce import (REPRODUCTIONS, Paper, Reproduction, require_files, run_command_line,
                               timed_class_balanced_samples, training_cost)

PAPER = Paper("On Distillation of Guided Diffusion Models", "Meng et al.",
              "CVPR 2023 (arXiv 2210.03142)")
CLAIM = ("A classifier-free-guided pixel model distilled first into one network taking the "
         "guidance weight, then progressively into fewer steps, matches the teacher's FID / IS "
         "with 4 sampling steps on ImageNet 64x64 and CIFAR-10, up to 256x fewer network "
         "calls than the guided teacher.")
TEACHER_CONFIG = os.path.join("configs", "mnist5k.py")
DISTILL_CONFIG = os.path.join("configs", "mnist5k_distill.py")
BATCH = 250
QUICK_STEPS = 100


def add_args(p) -> None:
    p.add_argument("--workdir", default=os.path.join("runs", "mnist5k"),
                   help="the teacher's workdir (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.65, help="CFG scale s of the main rows")
    p.add_argument("--other-scales", default="1.0,2.5",
                   help="further scales for the 4- and 1-step students and DDIM-50")
    p.add_argument("--samples", type=int, default=1000, help="samples per row")


def _plan(args) -> dict:
    base = args.workdir + ("_quick" if args.quick else "")
    return dict(teacher=base, guided=base + "_guided", progressive=base + "_progressive",
                samples=250 if args.quick else args.samples,
                other=[] if args.quick else [float(s) for s in args.other_scales.split(",")],
                flags=[f"--config.train.num_steps={QUICK_STEPS}"] if args.quick else [])


def stages(args) -> list[str]:
    return ["train teacher", "stage one", "stage two", "teacher rows", "student rows",
            "other scales"]


def check(args) -> None:
    del args
    require_files(TEACHER_CONFIG, DISTILL_CONFIG)


def _row(kind, config, workdir, step, samples, **sample_fields) -> dict:
    """Samples and scores one row: ``config`` with ``sample_fields`` set on its sample
    section, the model of ``workdir`` at checkpoint ``step`` (None: the newest)."""
    from jaxdiff.guidance import evals_per_call
    from jaxdiff.jobs.spec import restore_model, spec_for_data

    for k, v in sample_fields.items():
        if k == "scale":
            config.guidance.scale = float(v)
        else:
            config.sample[k] = v
    spec, _ = spec_for_data(config)
    params, used = restore_model(spec, workdir, step)
    calls = evals_per_call(config.guidance) * int(config.sample.steps)
    scores = timed_class_balanced_samples(spec, spec.guided(params), samples, BATCH)
    return dict(kind=kind, steps=int(config.sample.steps), grid=config.sample.grid,
                scale=float(config.guidance.scale), checkpoint_step=used,
                network_calls=calls, **scores)


def run(args, progress) -> dict:
    check(args)
    plan = _plan(args)
    steps_flag = plan["flags"]
    with progress.stage("train teacher"):
        run_command_line([f"--config={TEACHER_CONFIG}", f"--workdir={plan['teacher']}",
                          "--mode=train", "--config.train.progress_bar=False", *steps_flag])
    quick_rounds = ([f"--config.objective.steps_per_round={QUICK_STEPS // 4}",
                     f"--config.train.checkpoint_every={QUICK_STEPS // 4}"]
                    if args.quick else [])
    common = ["--mode=distill", "--config.train.progress_bar=False"]
    with progress.stage("stage one"):
        run_command_line([f"--config={DISTILL_CONFIG}:guided", f"--workdir={plan['guided']}",
                          f"--config.distill.teacher_workdir={plan['teacher']}", *common,
                          *steps_flag])
    with progress.stage("stage two"):
        run_command_line([f"--config={DISTILL_CONFIG}:progressive",
                          f"--workdir={plan['progressive']}",
                          f"--config.distill.teacher_workdir={plan['guided']}", *common,
                          *steps_flag, *quick_rounds])
    import json

    with open(os.path.join(plan["progressive"], "train_summary.json")) as f:
        rounds = json.load(f)["objective"]["rounds"]
    n, s = plan["samples"], args.scale
    rows = []
    with progress.stage("teacher rows"):
        rows.append(_row("teacher CFG", load(TEACHER_CONFIG), plan["teacher"], None, n,
                         sampler="ddim", grid="uniform_t", steps=50, scale=s))
        for steps in [2 * rounds[0]["student_steps"]] + [r["student_steps"] for r in rounds]:
            rows.append(_row("teacher CFG", load(TEACHER_CONFIG), plan["teacher"], None, n,
                             sampler="ddim", grid="uniform_t_to_zero", steps=steps, scale=s))
    with progress.stage("student rows"):
        rows.append(_row("stage one", load(f"{DISTILL_CONFIG}:guided"), plan["guided"], None,
                         n, sampler="ddim", grid="uniform_t_to_zero",
                         steps=2 * rounds[0]["student_steps"], scale=s))
        for r in rounds:
            rows.append(_row(f"round {r['round']}", load(f"{DISTILL_CONFIG}:progressive"),
                             plan["progressive"], r["checkpoint_step"], n,
                             steps=r["student_steps"], scale=s))
    with progress.stage("other scales"):
        for other in plan["other"]:
            rows.append(_row("teacher CFG", load(TEACHER_CONFIG), plan["teacher"], None, n,
                             sampler="ddim", grid="uniform_t", steps=50, scale=other))
            for r in rounds:
                if r["student_steps"] in (4, 1):
                    rows.append(_row(f"round {r['round']}", load(f"{DISTILL_CONFIG}:progressive"),
                                     plan["progressive"], r["checkpoint_step"], n,
                                     steps=r["student_steps"], scale=other))
    costs, minutes = {}, {}
    for stage, wd in (("stage one", plan["guided"]), ("stage two", plan["progressive"])):
        costs[stage], minutes[stage] = training_cost(wd)
    return dict(teacher_config=TEACHER_CONFIG, distill_config=DISTILL_CONFIG, scale=s,
                samples=n, rounds=rounds, distill_steps=costs, distill_minutes=minutes,
                rows=rows)


def _main_rows(result):
    return [r for r in result["rows"] if r["scale"] == result["scale"]]


def ours(result: dict) -> str:
    rows = _main_rows(result)
    ref = next(r for r in rows if r["kind"] == "teacher CFG" and r["steps"] == 50)
    four = next((r for r in rows if r["kind"].startswith("round") and r["steps"] == 4), None)
    one = next((r for r in rows if r["kind"].startswith("round") and r["steps"] == 1), None)
    t4 = next((r for r in rows if r["kind"] == "teacher CFG" and r["steps"] == 4), None)
    parts = [f"MNIST-5k, README teacher with CFG {result['scale']:g}, DDIM-50 "
             f"({ref['network_calls']} calls): FD {ref['fd']:.2f}, accuracy {ref['accuracy']:.3f}"]
    if four is not None and t4 is not None:
        parts.append(f"4-step student ({four['network_calls']} calls, "
                     f"{ref['network_calls'] // four['network_calls']}x fewer): FD "
                     f"{four['fd']:.2f}, accuracy {four['accuracy']:.3f} (the teacher's own "
                     f"DDIM-4 with CFG: FD {t4['fd']:.2f}, accuracy {t4['accuracy']:.3f})")
    if one is not None:
        parts.append(f"1-step student: FD {one['fd']:.2f}, accuracy {one['accuracy']:.3f}")
    return "; ".join(parts)


def markdown(result: dict) -> str:
    lines = ["Implementation: `jaxdiff/distill/guided.py` (stage one, guidance `distilled`), "
             "`jaxdiff/distill/progressive.py` (stage two); identities: `tests/test_distill.py`,"
             " the job: `tests/test_distill_job.py`.", "",
             f"- Teacher: `{result['teacher_config']}`; students: "
             f"`{result['distill_config']}` (`:guided` {result['distill_steps']['stage one']} "
             f"steps, `:progressive` {result['distill_steps']['stage two']} steps in "
             f"{len(result['rounds'])} rounds); EMA parameters." + _minutes(result),
             "- Rows: DDIM (eta 0); the teacher evaluates both CFG branches every step (2 "
             "network calls), a student one; wall time of the sampling calls after a warm-up "
             "call, batches of 250.",
             f"- Scores: own-feature FD and class accuracy in the pinned feature space, "
             f"{result['samples']} class-balanced samples per row against the 1,000 held-out "
             "images.", "",
             "| model | steps | grid | CFG scale | network calls | FD | accuracy | precision | "
             "recall | s / 1000 samples |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['steps']} | {r['grid']} | {r['scale']:g} | "
                     f"{r['network_calls']} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['seconds_per_1000']:.1f} |")
    return "\n".join(lines) + "\n"


def _minutes(result: dict) -> str:
    m = result.get("distill_minutes")
    if not m:
        return ""
    return (f"  Training cost on this machine: stage one {m['stage one']:.1f} min, stage two "
            f"{m['stage two']:.1f} min of wall time (2 cores).")


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _main_rows(result)
    teacher = sorted((r for r in rows if r["kind"] == "teacher CFG"
                      and r["grid"] == "uniform_t_to_zero"), key=lambda r: r["steps"])
    students = sorted((r for r in rows if r["kind"] != "teacher CFG"), key=lambda r: r["steps"])
    ref = next(r for r in rows if r["kind"] == "teacher CFG" and r["steps"] == 50)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((a, "fd", "own-feature FD"), (b, "accuracy", "class accuracy")):
        ax.plot([r["network_calls"] for r in teacher], [r[key] for r in teacher], "o-",
                label="teacher, CFG DDIM")
        ax.plot([r["network_calls"] for r in students], [r[key] for r in students], "s-",
                label="distilled students")
        ax.axhline(ref[key], color="gray", ls="--", label="teacher DDIM-50")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network calls per sample")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    a.set_yscale("log")
    fig.suptitle(f"Guided distillation on MNIST-5k, CFG scale {result['scale']:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPRODUCTIONS.register("guided_distill_mnist5k", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=plot,
    add_args=add_args, check=check, stages=stages,
    needs="trains the teacher (the README's main job) and both distillation stages if their "
          "workdirs are missing",
    summary="FD / accuracy / network calls / wall time: CFG teacher vs guided-distilled "
            "students at 16-1 steps"))
