"""``jaxdiff reproduce NAME`` / ``jaxdiff reproduce --list``: the paper reproductions of ``repro/``.

A reproduction is a small, bounded experiment that checks one claim of a paper with jaxdiff's
implementation of its method.  Each module of the top-level ``repro`` package registers one
``Reproduction`` in ``REPRODUCTIONS`` when it is imported:

    from jaxdiff.reproduce import REPRODUCTIONS, Paper, Reproduction

    REPRODUCTIONS.register("my_method_toy", Reproduction(
        paper=Paper("Title", "First et al.", "NeurIPS 2024"),
        claim="what the paper reports, in our words",
        stages=lambda args: ["stage 1", "stage 2"],
        run=run,          # run(args, progress) -> dict of measured numbers (JSON-serialisable)
        ours=ours,        # ours(result) -> str: our number, printed beside the claim
        markdown=markdown,  # markdown(result) -> str: the body of docs/methods/NAME.md
        plot=plot))       # plot(result, path): writes docs/methods/NAME.png

``jaxdiff reproduce NAME`` imports every ``repro.*`` module, runs NAME with a progress bar over
its stages, prints the paper's claim beside the number measured now and writes
``OUT_DIR/NAME.md``, ``NAME.json`` and ``NAME.png`` (``--out-dir``, default ``docs/methods``,
relative to the working directory: run it from the repository root).  ``--quick`` runs a small
version of the same protocol (seconds, for tests and smoke runs); its pages say so.

From a checkout: ``python3 -m jaxdiff.reproduce --list`` (the repository root is then on
``sys.path``, so ``repro`` imports); the installed ``jaxdiff`` console script ships ``repro``
as a package too.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import os
import platform
import pkgutil
import shlex
import sys
import time
from typing import Callable

from jaxdiff.errors import ConfigError
from jaxdiff.jsonio import write_json
from jaxdiff.registry import Registry

REPRODUCTIONS = Registry("reproduction")
DEFAULT_OUT_DIR = os.path.join("docs", "methods")


@dataclasses.dataclass(frozen=True)
class Paper:
    """The paper a reproduction checks: title, authors (e.g. 'Li et al.'), venue and year."""

    title: str
    authors: str
    venue: str

    def cite(self) -> str:
        return f"{self.authors}, \"{self.title}\", {self.venue}"


@dataclasses.dataclass(frozen=True)
class Reproduction:
    """One registered reproduction (see the module docstring for the fields' contracts).

    add_args: add_args(parser) adds the reproduction's own options (optional).
    check: check(args) raises ``MissingPrerequisite`` (naming the command that creates it) when
      an input is missing, before anything runs (optional).
    needs: a one-line description of what must exist before it runs (e.g. a trained model),
      shown by ``--list``.
    """

    paper: Paper
    claim: str
    run: Callable[[argparse.Namespace, "Progress"], dict]
    ours: Callable[[dict], str]
    markdown: Callable[[dict], str]
    plot: Callable[[dict, str], None] | None = None
    stages: Callable[[argparse.Namespace], list[str]] = lambda args: ["run"]
    add_args: Callable[[argparse.ArgumentParser], None] | None = None
    check: Callable[[argparse.Namespace], None] | None = None
    summary: str = ""
    needs: str = ""


class MissingPrerequisite(RuntimeError):
    """Raised by a reproduction whose input (a trained checkpoint, a dataset) is missing; the
    message names the command that creates it."""


def require_files(*paths: str) -> None:
    """Raises MissingPrerequisite for the first of ``paths`` (configs a reproduction reads,
    relative to the repository root) that does not exist."""
    for path in paths:
        if not os.path.exists(path):
            raise MissingPrerequisite(f"no config {path}: run from the repository root")


class ReproductionFailed(RuntimeError):
    """Raised by a reproduction whose step failed in a way its message explains (e.g. a
    subprocess's exit status); reported as one line, exit status 1."""


def run_command_line(flags: list[str]) -> float:
    """Runs ``python -m jaxdiff.main FLAGS`` as a subprocess (a reproduction's training,
    sampling or classify job); returns its wall seconds.  On failure the tail of its output goes
    to stderr and ``ReproductionFailed`` names the command and its exit status."""
    import subprocess

    cmd = [sys.executable, "-m", "jaxdiff.main", *flags]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        shown = " ".join(["python3", "-m", "jaxdiff.main", *flags])
        raise ReproductionFailed(f"`{shown}` exited with status {proc.returncode}")
    return time.time() - start


def check_trained_workdir(workdir: str, config: str, step: int | None = None) -> None:
    """Raises MissingPrerequisite, naming the training command, unless ``workdir`` holds a
    trained model (its checkpoint ``step``, when given) of the experiment ``config``."""
    path = os.path.join(workdir, "checkpoints", "" if step is None else str(step))
    if not os.path.isdir(path):
        what = "a trained model" if step is None else f"checkpoint {step}"
        raise MissingPrerequisite(
            f"no {what} in {workdir}; train it first:\n  python3 -m jaxdiff.main "
            f"--config={config} --workdir={workdir} --mode=train")


def trained_model(workdir: str, config_path: str, sampler: str, steps: int, grid: str):
    """(config, spec, params, train step) of the trained ``workdir`` of ``config_path``, its
    EMA parameters, with sampling set to (sampler, steps, grid)."""
    from jaxdiff.config import load_config_file
    from jaxdiff.jobs.spec import restore_model, spec_for_data

    config = load_config_file(config_path)
    config.sample.sampler, config.sample.steps, config.sample.grid = sampler, steps, grid
    spec, _ = spec_for_data(config)
    params, step = restore_model(spec, workdir)
    return config, spec, params, step


def guided_scores(spec, params, section, samples: int, batch: int = 250) -> dict:
    """``timed_class_balanced_samples`` of the run's model under the guidance ``section`` (a
    ``config.guidance``), built by the run's own path (``RunSpec.guided``)."""
    c = spec.config.copy_and_resolve_references()
    c.guidance = section
    run_spec = dataclasses.replace(spec, config=c)
    return timed_class_balanced_samples(run_spec, run_spec.guided(params), samples, batch)


def timed_class_balanced_samples(spec, den, samples: int, batch: int = 250) -> dict:
    """Draws ``samples`` class-balanced samples from ``den`` with the run's sampler
    (``spec.config.sample``: sampler, steps, grid, seed), ``batch`` at a time, and scores them
    with the evaluation's own-feature metrics against the held-out split.

    The wall time covers the sampling calls after a warm-up call that compiles (the whole last
    batch is drawn even when ``samples`` does not fill it).  Returns dict(samples, fd, accuracy,
    precision, recall, pinned, seconds, seconds_per_1000 (per sample drawn), nfe (denoiser
    calls per sample; network calls are nfe times the guidance's evaluations per call))."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff import samplers
    from jaxdiff.images import to_uint8
    from jaxdiff.jobs.evaluate import own_feature_metrics

    s = spec.config.sample
    shape = (batch,) + tuple(spec.example_shape)

    def draw(key, labels):   # samplers.sample compiles once per structure, and caches
        return samplers.sample(den, key, shape, sampler=s.sampler, steps=int(s.steps),
                               grid=s.grid, cond=spec.condition(labels), **dict(s.options)).x0

    labels = np.arange(-(-samples // batch) * batch) % max(spec.num_classes, 1)
    key = jax.random.key(int(s.seed))
    jax.block_until_ready(draw(key, jnp.asarray(labels[:batch])))   # compile
    nfe = samplers.SAMPLERS.entry(s.sampler, "sample.sampler").obj.nfe(int(s.steps))
    out, start = [], time.perf_counter()
    for i in range(0, len(labels), batch):
        out.append(np.asarray(draw(jax.random.fold_in(key, i), jnp.asarray(labels[i:i + batch]))))
    seconds = time.perf_counter() - start
    images = np.concatenate(out)[:samples]
    metrics = own_feature_metrics(spec.config, to_uint8(images), labels[:samples])
    own = metrics["own_features"]
    return dict(samples=samples, fd=own["fd"], accuracy=metrics["class_accuracy"],
                precision=own["precision"], recall=own["recall"],
                pinned=metrics["own_feature_network"]["pinned"], seconds=seconds,
                seconds_per_1000=1000.0 * seconds / len(labels), nfe=int(nfe))


def training_cost(workdir: str) -> tuple[int, float]:
    """(optimizer steps, wall minutes) of the job that trained ``workdir``: from its
    ``config.json`` (written when the job starts) to its ``train_summary.json``."""
    import json

    summary = os.path.join(workdir, "train_summary.json")
    with open(summary) as f:
        steps = json.load(f)["step"]
    start = os.path.getmtime(os.path.join(workdir, "config.json"))
    return steps, (os.path.getmtime(summary) - start) / 60.0


class Progress:
    """A tqdm bar over a reproduction's stages: ``with progress.stage(name): ...`` shows the
    stage while it runs and advances the bar when it ends."""

    def __init__(self, names: list[str], desc: str, disable: bool = False):
        from tqdm import tqdm

        self.names = list(names)
        self.bar = tqdm(total=len(self.names), desc=desc, unit="stage", disable=disable,
                        dynamic_ncols=True)
        self.done: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        self.bar.set_postfix_str(name)
        yield
        self.done.append(name)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def discover() -> list[str]:
    """Imports every module of the ``repro`` package (each registers its reproductions) and
    returns the module names; an installation without ``repro`` registers nothing."""
    try:
        import repro
    except ImportError:
        return []
    names = []
    for info in pkgutil.iter_modules(repro.__path__):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"repro.{info.name}")
        names.append(info.name)
    return names


def machine() -> str:
    """One line: CPU, cores, JAX version, backend and devices."""
    import jax

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__}, backend "
            f"{jax.default_backend()}, {jax.device_count()} device(s)")


def generated_line(meta: dict) -> str:
    """'Generated by `command` on date in N s (quick mode).  Machine: ...; load ...'; fields
    that a page made by an earlier script lacks (None) are left out."""
    text = f"Generated by `{meta['command']}`"
    if meta.get("code_at"):
        text += f" (code at commit {meta['code_at']})"
    text += f" on {meta['date']}"
    if meta.get("seconds") is not None:
        text += f" in {meta['seconds']:.0f} s"
    if meta.get("quick"):
        text += " (**quick mode**: a reduced budget, not the documented protocol)"
    text += f".  Machine: {meta['machine']}"
    if meta.get("load_start") is not None:
        text += (f"; 1-minute load {meta['load_start']:.2f} at the start, "
                 f"{meta['load_end']:.2f} at the end")
    return text + "."


def render_page(name: str, rep: Reproduction, result: dict, meta: dict) -> str:
    """docs/methods/NAME.md: the paper, its claim beside our number, how it was made, then the
    reproduction's own body and plot."""
    lines = [
        f"# {rep.paper.title}",
        "",
        f"{rep.paper.cite()}.  Reproduction `{name}` (`repro/{meta['module']}.py`); index: "
        "`docs/methods.md`.",
        "",
        "| | |",
        "|---|---|",
        f"| the paper's claim | {rep.claim} |",
        f"| our number | {rep.ours(result)} |",
        "",
        generated_line(meta),
        "",
        rep.markdown(result).rstrip(),
        "",
    ]
    if meta.get("plot"):
        lines += [f"![{name}]({meta['plot']})", ""]
    return "\n".join(lines)


def list_text() -> str:
    discover()
    rows = []
    for name in sorted(REPRODUCTIONS):
        rep = REPRODUCTIONS[name]
        rows.append(f"{name}\n    paper: {rep.paper.cite()}\n    claim: {rep.claim}"
                    + (f"\n    what: {rep.summary}" if rep.summary else "")
                    + (f"\n    needs: {rep.needs}" if rep.needs else ""))
    return "\n".join(rows) if rows else "no reproductions found (is the repro package importable?)"


def _parser(rep: Reproduction | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxdiff reproduce",
        description="Run a paper reproduction of repro/ and write docs/methods/NAME.md, "
                    ".json and .png; --list names them.")
    p.add_argument("name", nargs="?", help="the reproduction to run (see --list)")
    p.add_argument("--list", action="store_true", help="list the reproductions and exit")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR,
                   help="where NAME.md / .json / .png go (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a small budget of the same protocol (seconds; for tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if rep is not None and rep.add_args is not None:
        rep.add_args(p.add_argument_group("options of this reproduction"))
    return p


def run_one(name: str, args: argparse.Namespace, argv: list[str]) -> dict:
    """Runs reproduction ``name``; writes its page, JSON and plot; returns the JSON record."""
    rep = REPRODUCTIONS.entry(name).obj
    module = rep.run.__module__   # the repro.* module that registered it
    if rep.check is not None:
        rep.check(args)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    progress = Progress(rep.stages(args), desc=name, disable=args.no_progress)
    try:
        result = rep.run(args, progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    os.makedirs(args.out_dir, exist_ok=True)
    meta = dict(module=module.rsplit(".", 1)[-1],
                command=" ".join(["jaxdiff", "reproduce", *map(shlex.quote, argv)]),
                date=datetime.date.today().isoformat(), seconds=seconds, quick=bool(args.quick),
                machine=machine(), load_start=load_start, load_end=os.getloadavg()[0])
    if rep.plot is not None:
        rep.plot(result, os.path.join(args.out_dir, f"{name}.png"))
        meta["plot"] = f"{name}.png"
    record = dict(reproduction=name, paper=dataclasses.asdict(rep.paper), claim=rep.claim,
                  ours=rep.ours(result), meta=meta, result=result)
    write_json(os.path.join(args.out_dir, f"{name}.json"), record, indent=1)
    with open(os.path.join(args.out_dir, f"{name}.md"), "w") as f:
        f.write(render_page(name, rep, result, meta))
    return record


def main(argv: list[str]) -> int:
    """``jaxdiff reproduce`` with ``argv`` (the arguments after 'reproduce'); returns the exit
    status: 0 done, 1 the reproduction failed, 2 a usage error or a missing prerequisite."""
    first, _ = _parser().parse_known_args(argv)
    if first.list:
        print(list_text())
        return 0
    discover()
    if not first.name:
        _parser().print_usage(sys.stderr)
        print("jaxdiff reproduce: error: name a reproduction, or --list", file=sys.stderr)
        return 2
    if first.name not in REPRODUCTIONS:
        try:
            REPRODUCTIONS.entry(first.name)
        except ConfigError as e:  # names the registered ones and the closest
            print(f"jaxdiff reproduce: error: {str(e).replace('config.', '')}", file=sys.stderr)
        return 2
    rep = REPRODUCTIONS[first.name]
    args = _parser(rep).parse_args(argv)
    try:
        record = run_one(args.name, args, argv)
    except MissingPrerequisite as e:
        print(f"jaxdiff reproduce {args.name}: {e}", file=sys.stderr)
        return 2
    except ReproductionFailed as e:
        print(f"jaxdiff reproduce {args.name}: failed: {e}", file=sys.stderr)
        return 1
    print(f"\n{args.name}: {rep.paper.cite()}")
    print(f"  the paper's claim: {record['claim']}")
    print(f"  our number:        {record['ours']}"
          + ("  (quick mode)" if args.quick else ""))
    print(f"  wrote {os.path.join(args.out_dir, args.name)}.md, .json"
          + (", .png" if rep.plot is not None else ""))
    return 0


if __name__ == "__main__":
    # Run as ``python -m jaxdiff.reproduce`` this file is ``__main__``, while the repro modules
    # register into ``jaxdiff.reproduce``: hand over to that module so both see one registry.
    from jaxdiff import reproduce as _module

    sys.exit(_module.main(sys.argv[1:]))
