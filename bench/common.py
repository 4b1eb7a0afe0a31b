"""Helpers shared by the benchmarks: worker processes, alternating rounds, load waits, machine
metadata, the docs/performance.md sections and a compile counter.

Standard library only at import time (jax is imported inside ``CompileCounter``), because the
PyTorch worker (``bench/torch_unet.py``) imports this module from a virtual environment that has
torch but not jaxdiff's dependencies.

Every benchmark runs as a module from the repository root, e.g.
``python -m bench.train_throughput``; its workers are started the same way, in the repository
root, so they import this checkout's jaxdiff.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "performance.md")
DOC_HEADER = """# Performance

CPU (and, where an accelerator was available, GPU / TPU) throughput of jaxdiff's networks,
against the closest diffusers U-Net in PyTorch where one exists, measured in the same run.
How to reproduce: `bench/README.md`.
"""
RESULT_PREFIX = "RESULT "
DEFAULT_VENV = "/tmp/jaxdiff-bench-venv"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build

# Environment changes of the JAX variants (None removes the variable).
JAX_VARIANTS = {
    "default": {"JAXDIFF_NO_XLA_FLAGS": None, "XLA_FLAGS": None},
    "flag_off": {"JAXDIFF_NO_XLA_FLAGS": "1", "XLA_FLAGS": None},
    "2dev": {"JAXDIFF_NO_XLA_FLAGS": None,
             "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
}


# ------------------------------------------------------------------------------------------------
# command line and worker processes
# ------------------------------------------------------------------------------------------------


def add_runner_args(p) -> None:
    """The options every benchmark shares: PyTorch venv, load wait, output, worker mode."""
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


def variant_env(variant: str) -> dict:
    """Environment changes of a variant's worker ('baseline' runs with the default flags,
    'torch' with none)."""
    if variant == "torch":
        return {}
    return JAX_VARIANTS["default" if variant == "baseline" else variant]


def jax_worker_cmd(args, variant: str, module: str) -> tuple[list[str], str]:
    """(command, working directory) of the JAX worker of benchmark ``module`` (e.g.
    'bench.train_throughput') for ``variant``: this checkout's, or the baseline worktree's.
    A baseline revision from before bench/ was a package ran its benchmarks as scripts."""
    root = args.baseline_path if variant == "baseline" else REPO
    if os.path.exists(os.path.join(root, "bench", "__init__.py")):
        return [sys.executable, "-m", module, "--worker"], root
    script = os.path.join(root, "bench", module.rsplit(".", 1)[-1] + ".py")
    return [sys.executable, script, "--worker"], root


def torch_worker_cmd(args, mode: str) -> tuple[list[str], str]:
    """(command, working directory) of the PyTorch worker (``bench/torch_unet.py``) in ``mode``
    ('train', 'sample'), run by the venv python."""
    return [torch_python(args.torch_python), "-m", "bench.torch_unet", mode], REPO


def run_worker(cmd: list[str], env: dict | None = None, label: str = "",
               cwd: str | None = None) -> dict:
    """Runs one worker process in ``cwd``; returns its RESULT json (its output is passed through
    on failure)."""
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    t0 = time.time()
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, cwd=cwd)
    wall = time.time() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"worker {label or cmd} failed with exit code {proc.returncode}")
    out = json.loads(lines[-1][len(RESULT_PREFIX):])
    out["process_wall_s"] = wall
    return out


def run_all(args, variants: list[str], cmd_fn, label: str, report) -> dict[str, list[dict]]:
    """Alternating rounds: round r runs the variants in order (r even) or reversed (r odd).

    Each variant's worker runs ``cmd_fn(args, variant) -> (command, cwd)`` in
    ``variant_env(variant)``; ``report(round, variant, result)`` prints its progress line."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for v in order:
            cmd, cwd = cmd_fn(args, v)
            res = run_worker(cmd, env=variant_env(v), label=f"{label}:{v}", cwd=cwd)
            res["load_after"] = load_average()
            results[v].append(res)
            report(r, v, res)
    return results


def first_jax_result(results: dict[str, list[dict]]) -> dict:
    """The first JAX worker's result of a run ({} when only PyTorch ran)."""
    return next((r[0] for v, r in results.items() if v != "torch"), {})


def results_backend(results: dict[str, list[dict]]) -> str:
    """The JAX backend the workers of a run reported ('cpu' when only PyTorch ran)."""
    return first_jax_result(results).get("backend", "cpu")


def emit(result: dict) -> None:
    """Worker side: adds peak RSS and prints the RESULT line."""
    # ru_maxrss is in KiB on Linux.
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------


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


def summarize(times: list[float]) -> dict:
    return dict(times=times, median_s=statistics.median(times))


class CompileCounter:
    """Counts XLA backend compilations in this process, through JAX's public monitoring events
    (``jax.monitoring``: one '/jax/core/compile/backend_compile_duration' event per program XLA
    compiles; a call served from the jit cache records none).

        counter = CompileCounter()
        before = counter.count
        f(x)
        compiled = counter.count - before

    It counts every compilation of the process, the small helper programs JAX compiles for
    e.g. a first ``jax.random.key`` too, so "no compilation between two points" is the strict
    form of "the sampler did not recompile".
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        import jax.monitoring

        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration_secs: float, **kwargs) -> None:
        del duration_secs, kwargs
        if event == self.EVENT:
            self.count += 1


# ------------------------------------------------------------------------------------------------
# environment and machine
# ------------------------------------------------------------------------------------------------


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


def versions(packages=("jax", "jaxlib", "flax", "optax")) -> dict:
    """Installed versions of ``packages`` ('not installed' for a missing one)."""
    v = {}
    for pkg in packages:
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = "not installed"
    return v


def cpu_info() -> dict:
    """The CPU model (from lscpu) and the number of cores."""
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


def run_meta(module: str, argv: list[str] | None, wait: dict | None = None, **extra) -> dict:
    """What a bench's doc section opens with: the command that made it (``python -m module``
    with ``argv`` or the process's arguments), the date, the machine and, given ``wait`` from
    ``wait_for_load``, the load average at the start and now; plus ``extra``."""
    meta = dict(command=" ".join(["python", "-m", module] + list(
        sys.argv[1:] if argv is None else argv)),
        date=datetime.date.today().isoformat(), **cpu_info(), **extra)
    if wait is not None:
        meta.update(load_start=wait["load_at_start"], waited_s=wait["waited_s"],
                    gave_up=wait["gave_up"], load_end=load_average())
    return meta


# ------------------------------------------------------------------------------------------------
# docs/performance.md
# ------------------------------------------------------------------------------------------------


def doc_section(kind: str, model: str, backend: str) -> str:
    """The docs/performance.md section of a run: ``kind`` ('training', 'sampling'), then the
    model when not the default U-Net, then the JAX backend when not the CPU (an accelerator run
    must not replace the CPU comparison tables), e.g. 'training', 'training-cifar10_unet-gpu'."""
    return "-".join([kind] + ([model] if model != "default" else [])
                    + ([backend] if backend != "cpu" else []))


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


def publish(text: str, section: str, write: bool, doc: str = DOC,
            header: str = DOC_HEADER) -> None:
    """Prints a bench's rendered section and, when ``write``, replaces it in ``doc``."""
    print(text)
    if write:
        replace_section(doc, section, text, header)
        print(f"wrote {doc}")
