"""The fault table: malformed inputs and faults, each run through the command line.

Every row of ``FAULTS`` is one command line of ``jaxdiff`` against a prepared workdir (a fresh
path, or a copy of one tiny trained run with its samples) and what it must give:

  * the exit status: 2 for a wrong command line or config, 1 for a fault met while running,
    0 where jaxdiff recovers by itself (an unreadable newest checkpoint, a damaged shard);
  * stderr: for an error, exactly one line ``jaxdiff: error: ...`` naming the cause (and no
    ``Traceback``); for a recovery, its one ``jaxdiff: warning: ...`` line (a progress bar that
    a failing job leaves in a log does not count as a line);
  * the workdir: files hashed before and after; ``same`` = nothing changed, ``absent`` = the
    failed command created nothing.  Config and usage errors also run with JAX's compile log
    on, so their single stderr line proves that nothing was compiled.

All rows run in one subprocess (``tests/helpers/fault_runner.py``: one import of jaxdiff, one
fork per row).  The tests after the table check what the rows leave behind in more depth: the
diverged run's checkpoints, the fallback's resumed state, the failed write's intact checkpoints.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.cli import DIGITS, ROOT, TINY_FLAGS, cli, cli_env

# One worker runs the whole module: its module-scoped runs are built once.
pytestmark = pytest.mark.xdist_group("faults")

RUNNER = os.path.join(ROOT, "tests", "helpers", "fault_runner.py")
SAMPLE_FLAGS = ["--config.sample.num_samples=20", "--config.sample.shard_size=10",
                "--config.train.sample_every=0"]
BASE = [*TINY_FLAGS, *SAMPLE_FLAGS]
RESUME = ["--config.train.num_steps=8"]


@dataclasses.dataclass(frozen=True)
class Fault:
    """One row: ``args`` (with {wd}, {tmp}, {cfg}) run against a workdir made by ``setup``."""

    id: str
    args: tuple
    rc: int
    line: str                      # a substring of the one error (or warning) line
    workdir: str = "fresh"         # 'fresh' (a path that does not exist) or 'trained' (a copy)
    setup: str = ""                # name of a function below that damages the workdir first
    after: str = "same"            # 'same', 'absent', or '' (checked by a test below)
    config: str = DIGITS
    env: tuple = ()
    fsize_limit: int = 0

    @property
    def is_usage(self) -> bool:
        return self.rc == 2


def _cfg(name, flag, **kw):
    """A config error: exit 2 naming the field of ``flag``, nothing created."""
    field = flag.split("=")[0][len("--config."):]
    return Fault(name, ("--workdir={wd}", flag), 2, kw.pop("line", f"jaxdiff: error: config.{field}"),
                 after=kw.pop("after", "absent"), **kw)


FAULTS = [
    # --- the command line ----------------------------------------------------------------
    Fault("no-config", ("--workdir={wd}",), 2, "--config is required", config="", after="absent"),
    Fault("no-workdir", (), 2, "--workdir is required", after="absent"),
    Fault("config-file-missing", ("--workdir={wd}",), 2, "--config: no such file",
          config="{tmp}/nope.py", after="absent"),
    Fault("config-file-with-argument-missing", ("--workdir={wd}",), 2,
          "--config: no such file configs/nope.py (relative to", config="configs/nope.py:small",
          after="absent"),
    Fault("config-syntax-error", ("--workdir={wd}",), 2, "line 1: SyntaxError",
          config="{tmp}/syntax.py", after="absent"),
    Fault("config-without-get_config", ("--workdir={wd}",), 2, "defines no get_config()",
          config="{tmp}/noget.py", after="absent"),
    Fault("config-get_config-raises", ("--workdir={wd}",), 2, "line 2: ZeroDivisionError",
          config="{tmp}/raises.py", after="absent"),
    Fault("override-unknown-field", ("--workdir={wd}", "--config.train.nmu_steps=3"), 2,
          "config.train has no field 'nmu_steps'; did you mean 'num_steps'?", after="absent"),
    Fault("override-unknown-section", ("--workdir={wd}", "--config.trian.num_steps=3"), 2,
          "config has no field 'trian'; did you mean 'train'?", after="absent"),
    Fault("override-bad-type", ("--workdir={wd}", "--config.train.num_steps=abc"), 2,
          "--config.train.num_steps=abc: invalid literal", after="absent"),
    Fault("unknown-flag", ("--workdir={wd}", "--bogus"), 2, "Unknown command line flag 'bogus'",
          after="absent"),
    Fault("unknown-mode", ("--workdir={wd}", "--mode=trian"), 2, "--mode: unknown ['trian']",
          after="absent"),
    Fault("positional-argument", ("--workdir={wd}", "train"), 2, "unexpected arguments",
          after="absent"),
    # --- config fields (validated before anything is built or written) -------------------
    _cfg("network", "--config.model.name=foo"),
    _cfg("lr", "--config.optim.lr=-1"),
    _cfg("dataset", "--config.data.name=nope"),
    _cfg("sampler", "--config.sample.sampler=nope"),
    _cfg("model-vs-data", "--config.model.channel_mult=(1,2,2,2,2)"),
    _cfg("batch-size", "--config.train.batch_size=0"),
    _cfg("num-steps", "--config.train.num_steps=0"),
    _cfg("schedule", "--config.diffusion.schedule=nope"),
    _cfg("parameterization", "--config.diffusion.parameterization=nope"),
    _cfg("guidance-name", "--config.guidance.name=nope"),
    _cfg("guidance-scale-nan", "--config.guidance.scale=nan"),
    _cfg("guidance-interval", "--config.guidance.t_lo=2.0"),
    _cfg("objective", "--config.objective.name=nope"),
    _cfg("stitch-fractions", "--config.stitch.fractions=(0.4,)"),
    _cfg("sample-steps", "--config.sample.steps=0"),
    _cfg("sample-grid", "--config.sample.grid=nope"),
    _cfg("ema-decays-empty", "--config.train.ema_decays=()"),
    _cfg("ema-index", "--config.sample.ema_index=3"),
    _cfg("max-nonfinite", "--config.train.max_nonfinite_steps=0"),
    _cfg("keep-checkpoints", "--config.train.keep_checkpoints=0"),
    _cfg("time-limit", "--config.train.time_limit_minutes=-1"),
    _cfg("adam-b1", "--config.optim.b1=2.0"),
    _cfg("shard-size", "--config.sample.shard_size=0"),
    _cfg("classifier-steps", "--config.eval.classifier_steps=0"),
    Fault("sample-labels", ("--workdir={wd}", *BASE, "--mode=sample",
                            "--config.sample.labels=15"), 2, "config.sample.labels",
          workdir="trained"),
    # --- the workdir ---------------------------------------------------------------------
    Fault("workdir-is-a-file", ("--workdir={wd}",), 1, "is a file, not a directory",
          setup="make_file"),
    Fault("workdir-under-a-file", ("--workdir={wd}/run",), 1, "cannot be created",
          setup="make_file"),
    Fault("workdir-not-writable", ("--workdir=/proc/jaxdiff-run",), 1, "is not writable",
          after=""),
    # --- missing inputs ------------------------------------------------------------------
    Fault("sample-before-training", ("--workdir={wd}", "--mode=sample"), 1, "train first",
          setup="make_dir"),
    Fault("eval-before-training", ("--workdir={wd}", "--mode=eval"), 1, "train first",
          setup="make_dir"),
    Fault("classify-before-training", ("--workdir={wd}", "--mode=classify"), 1, "train first",
          setup="make_dir"),
    Fault("eval-before-sampling", ("--workdir={wd}", *BASE, "--mode=eval",
                                   "--config.sample.seed=7"), 1,
          "run --mode=sample with this config first", workdir="trained"),
    Fault("checkpoint-step-missing", ("--workdir={wd}", *BASE, "--mode=sample",
                                      "--config.sample.checkpoint_step=3"), 1,
          "no such checkpoint", workdir="trained"),
    Fault("tfds-not-prepared", ("--workdir={wd}", "--config.data.name=tfds",
                                "--config.data.tfds_name=cifar10",
                                "--config.data.tfds_data_dir={tmp}/tfds_empty",
                                "--config.data.image_size=32"), 1, "tfds build cifar10",
          after=""),
    Fault("inception-weights-missing", ("--workdir={wd}", "--mode=train,sample,eval"), 1,
          "does not exist", env=(("JAXDIFF_INCEPTION_WEIGHTS", "{tmp}/missing.pth"),),
          after="absent"),
    Fault("inception-weights-wrong-file", ("--workdir={wd}", "--mode=train,sample,eval"), 1,
          "require_standard_inception=False", env=(("JAXDIFF_INCEPTION_WEIGHTS",
                                                     "{tmp}/junk.pth"),), after="absent"),
    # --- checkpoints that cannot serve the config ----------------------------------------
    Fault("resume-other-model", ("--workdir={wd}", *BASE, *RESUME,
                                 "--config.model.base_channels=16"), 1,
          "trained with model.base_channels=8 (config has 16)", workdir="trained"),
    Fault("sample-other-model", ("--workdir={wd}", *BASE, "--mode=sample",
                                 "--config.model.base_channels=16"), 1,
          "trained with model.base_channels=8 (config has 16)", workdir="trained"),
    Fault("resume-other-ema", ("--workdir={wd}", *BASE, *RESUME,
                               "--config.train.ema_decays=(0.99,0.999)"), 1,
          "train.ema_decays", workdir="trained"),
    Fault("resume-other-parameterization", ("--workdir={wd}", *BASE, *RESUME,
                                            "--config.diffusion.parameterization=v"), 1,
          "diffusion.parameterization", workdir="trained"),
    Fault("shapes-differ-without-config-json", ("--workdir={wd}", *BASE, "--mode=sample",
                                                "--config.model.base_channels=16"), 1,
          "arrays differ in shape or dtype", workdir="trained", setup="remove_config_json"),
    Fault("config-json-corrupt", ("--workdir={wd}", *BASE, *RESUME), 1,
          "config.json is unreadable", workdir="trained", setup="truncate_config_json"),
    Fault("checkpoint-of-earlier-layout", ("--workdir={wd}", "--mode=sample"), 1,
          "train again into a new --workdir", setup="old_layout"),
    # --- damaged files -------------------------------------------------------------------
    Fault("sample-newest-checkpoint-truncated", ("--workdir={wd}", *BASE, "--mode=sample",
                                                 "--config.sample.seed=5"), 0,
          "jaxdiff: warning: checkpoint 6 in", workdir="trained", setup="truncate_newest",
          after=""),
    Fault("resume-newest-checkpoint-truncated", ("--workdir={wd}", *BASE, *RESUME), 0,
          "jaxdiff: warning: checkpoint 6 in", workdir="trained", setup="truncate_newest",
          after=""),
    Fault("resume-from-the-older-checkpoint", ("--workdir={wd}", *BASE, *RESUME), 0, "",
          workdir="trained", setup="remove_newest", after=""),   # the reference of the above
    Fault("chosen-checkpoint-truncated", ("--workdir={wd}", *BASE, "--mode=sample",
                                          "--config.sample.checkpoint_step=6"), 1,
          "checkpoint 6 in", workdir="trained", setup="truncate_newest"),
    Fault("every-checkpoint-truncated", ("--workdir={wd}", *BASE, "--mode=sample"), 1,
          "no readable checkpoint", workdir="trained", setup="truncate_all", after=""),
    Fault("eval-shard-truncated", ("--workdir={wd}", *BASE, "--mode=eval"), 1,
          "corrupted or incomplete shard", workdir="trained", setup="truncate_shard"),
    Fault("sample-redraws-truncated-shard", ("--workdir={wd}", *BASE, "--mode=sample"), 0,
          "drawing it again", workdir="trained", setup="truncate_shard", after=""),
    # --- divergence and a full disk ------------------------------------------------------
    Fault("diverging-run", ("--workdir={wd}", *BASE, "--config.optim.lr=1e6",
                            "--config.train.num_steps=30", "--config.train.max_nonfinite_steps=5"),
          1, "training diverged", after=""),
    Fault("disk-full-during-checkpoint", ("--workdir={wd}", *BASE, *RESUME), 1,
          "could not write checkpoint 8", workdir="trained", fsize_limit=48 << 10, after=""),
    Fault("disk-full-during-sampling", ("--workdir={wd}", *BASE, "--mode=sample",
                                        "--config.sample.seed=9"), 1, "File too large",
          workdir="trained", fsize_limit=600, after=""),
]

CONFIG_FILES = {"syntax.py": "def get_config(:\n", "noget.py": "x = 1\n",
                "raises.py": "def get_config():\n    return 1 / 0\n"}


# ---- workdir damage (setup functions) ----------------------------------------------------

def make_file(wd):
    wd.write_text("not a directory\n")


def make_dir(wd):
    wd.mkdir()


def remove_config_json(wd):
    (wd / "config.json").unlink()


def truncate_config_json(wd):
    text = (wd / "config.json").read_text()
    (wd / "config.json").write_text(text[: len(text) // 2])


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _truncate_step(wd, step):
    for root, _, files in os.walk(wd / "checkpoints" / str(step) / "model" / "d"):
        for name in files:
            _truncate(os.path.join(root, name))


def truncate_newest(wd):
    _truncate_step(wd, max(_steps(wd)))


def remove_newest(wd):
    shutil.rmtree(wd / "checkpoints" / str(max(_steps(wd))))


def truncate_all(wd):
    for step in _steps(wd):
        _truncate_step(wd, step)


def truncate_shard(wd):
    _truncate(_shards(wd)[0])


def old_layout(wd):
    from jaxdiff.checkpoint import Checkpointer

    old = Checkpointer(wd / "checkpoints", async_save=False)  # the earlier one-item layout
    old.save(3, {"step": np.int32(3), "params": {"w": np.zeros(2, np.float32)}}, force=True)
    old.close()


def _steps(wd):
    return sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit())


def _shards(wd):
    return sorted(str(p) for p in wd.glob("samples/*/shard_*.npz"))


def _hashes(path) -> dict:
    if not os.path.exists(path):
        return {}
    if os.path.isfile(path):
        return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---- running the table -------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny CLI run, train then sample (compile log on): checkpoints 2, 4, 6 and 20
    samples in two shards."""
    workdir = tmp_path_factory.mktemp("faults_trained") / "run"
    proc = cli([f"--workdir={workdir}", *BASE, "--mode=train,sample"],
               cli_env(tmp_path_factory, JAX_LOG_COMPILES="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, workdir


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run[1]


def test_cli_run_writes_checkpoints_summary_grid_samples_and_logs_its_compiles(trained_run):
    proc, workdir = trained_run
    # The compile log that the one-line checks rely on is really on stderr in this setup.
    assert re.search(r"Compiling jit\(train_step\)|Finished .* train_step", proc.stderr)
    assert "Traceback" not in proc.stderr
    assert os.path.getsize(workdir / "samples" / "final.png") > 0
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["step"] == 6 and summary["stopped"] == "finished"
    assert summary["sample_grid"] == str(workdir / "samples" / "final.png")
    assert summary["processes"] == 1 and summary["devices"] == 1
    assert summary["skipped_nonfinite_steps"] == 0
    assert _steps(workdir) == [2, 4, 6] and len(_shards(workdir)) == 2
    assert "step 6/6" in proc.stdout and "sampling from checkpoint step 6" in proc.stdout
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 6
    # two modes: the last line gives each one's wall time
    assert re.fullmatch(r"wall time: train \d+ s, sample \d+ s \(total \d+ s\)",
                        proc.stdout.strip().splitlines()[-1]), proc.stdout[-500:]


@pytest.fixture(scope="module")
def table(trained, tmp_path_factory):
    """Runs every row; returns {id: (fault, result, workdir, hashes before)}."""
    tmp = tmp_path_factory.mktemp("faults")
    for name, text in CONFIG_FILES.items():
        (tmp / name).write_text(text)
    (tmp / "junk.pth").write_bytes(b"\0" * 1024)
    (tmp / "tfds_empty").mkdir()
    env = cli_env(tmp_path_factory, JAXDIFF_CACHE=str(tmp / "cache"))
    cases, rows = [], {}
    for fault in FAULTS:
        wd = tmp / "runs" / fault.id
        wd.parent.mkdir(exist_ok=True)
        if fault.workdir == "trained":
            shutil.copytree(trained, wd)
        if fault.setup:
            globals()[fault.setup](wd)
        fill = lambda s, wd=wd: s.format(wd=wd, tmp=tmp)  # noqa: E731
        argv = ([f"--config={fill(fault.config)}"] if fault.config else []) + [
            fill(a) for a in fault.args]
        cases.append(dict(id=fault.id, argv=argv, cwd=ROOT, log_compiles=fault.is_usage,
                          env={k: fill(v) for k, v in fault.env},
                          fsize_limit=fault.fsize_limit))
        rows[fault.id] = (fault, wd, _hashes(wd))
    (tmp / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, RUNNER, str(tmp / "cases.json"),
                           str(tmp / "results.json")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp / "results.json").read_text())
    return {k: (f, results[k], wd, before) for k, (f, wd, before) in rows.items()}


def test_the_table_has_at_least_40_distinct_faults_each_in_the_docs():
    assert len({f.id for f in FAULTS}) == len(FAULTS) >= 40
    with open(os.path.join(ROOT, "docs", "reliability.md")) as f:
        doc = f.read()
    assert not [f.id for f in FAULTS if f.id not in doc]


@pytest.mark.parametrize("fault_id", [f.id for f in FAULTS])
def test_fault_gives_one_line_its_exit_status_and_keeps_the_workdir(table, fault_id):
    fault, result, wd, before = table[fault_id]
    err = _console_lines(result["stderr"])
    context = f"{fault_id}: rc={result['rc']}\nstderr:\n{result['stderr'][-3000:]}"
    assert result["rc"] == fault.rc, context
    assert "Traceback" not in result["stderr"] + result["stdout"], context
    if fault.rc:
        assert len(err) == 1, context
        assert err[0].startswith("jaxdiff: error: ") and fault.line in err[0], context
    else:
        warnings = [line for line in err if line.startswith("jaxdiff: warning: ")]
        assert len(warnings) == (1 if fault.line else 0), context
        assert not fault.line or fault.line in warnings[0], context
        assert not [line for line in err if line.startswith("jaxdiff: error")], context
    if fault.after == "same":
        assert _hashes(wd) == before, f"{fault_id}: the workdir changed"
    elif fault.after == "absent":
        assert not os.path.exists(wd), f"{fault_id}: the failed command created {wd}"


_BAR = re.compile(r"^[\w ]+: +\d+%\|.*\| \d+/\d+ \[")  # a tqdm progress bar's line


def _console_lines(text: str) -> list[str]:
    """The non-blank lines of ``text`` other than progress bars (which a job stopped mid-way
    leaves in a log; a terminal erases them), as a terminal shows them: a carriage return
    moves back to the start of the line."""
    lines = []
    for raw in text.split("\n"):
        shown: list[str] = []
        for part in raw.split("\r"):
            shown[: len(part)] = part
        line = "".join(shown).rstrip()
        if line.strip() and not _BAR.match(line):
            lines.append(line)
    return lines


def _row(table, fault_id):
    return table[fault_id][1], table[fault_id][2]


def _restored(wd, step):
    import jax

    from jaxdiff.checkpoint import Checkpointer

    ckpt = Checkpointer(wd / "checkpoints", async_save=False, items=("model", "train"))
    meta = ckpt._manager.item_metadata(step)
    target = {item: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                 meta[item].tree) for item in ("model", "train")}
    state, _ = ckpt.restore(step, target=target)
    ckpt.close()
    return jax.device_get(state)


def test_a_diverged_run_keeps_only_finite_checkpoints_and_a_strict_summary(table):
    from jaxdiff.checkpoint import all_finite

    result, wd = _row(table, "diverging-run")
    summary = json.loads((wd / "train_summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert summary["stopped"] == "diverged" and summary["skipped_nonfinite_steps"] >= 5
    steps = _steps(wd)
    assert steps and max(steps) < summary["step"]
    for step in steps:  # each restores, and holds finite values only
        assert all_finite(_restored(wd, step)), f"checkpoint {step} holds non-finite values"
    assert "skipped" in result["stdout"]


def test_the_fallback_resumes_from_the_older_checkpoint_and_keeps_the_damaged_one(table,
                                                                                 trained):
    result, wd = _row(table, "resume-newest-checkpoint-truncated")
    assert "resumed from" in result["stdout"] and "at step 4" in result["stdout"]
    assert _steps(wd) == [4, 6, 8]  # 6 and 8 trained again from 4
    assert sorted(os.listdir(wd / "checkpoints.corrupt")) == ["6"]
    result, wd = _row(table, "sample-newest-checkpoint-truncated")
    assert "sampling from checkpoint step 4" in result["stdout"]
    assert [p.split("/")[-2].split("-")[0] for p in _shards(wd) if "seed5" in p] == ["step4"] * 2


def test_resuming_past_a_damaged_checkpoint_is_bit_identical_to_resuming_from_the_older(table):
    """Falling back from the truncated step 6 to step 4 and training on to 8 gives exactly the
    state of a run resumed from step 4 with no step 6 at all."""
    _, fell_back = _row(table, "resume-newest-checkpoint-truncated")
    _, reference = _row(table, "resume-from-the-older-checkpoint")
    import chex

    chex.assert_trees_all_equal(_restored(fell_back, 8), _restored(reference, 8))


def test_a_redrawn_shard_equals_the_one_it_replaces(table, trained):
    _, wd = _row(table, "sample-redraws-truncated-shard")
    damaged = _shards(wd)[0]
    assert os.path.exists(damaged + ".corrupt")
    with np.load(damaged) as new, np.load(_shards(trained)[0]) as original:
        for key in ("samples", "labels", "indices"):
            np.testing.assert_array_equal(new[key], original[key])


def test_a_failed_write_leaves_the_earlier_checkpoints_intact(table, trained):
    result, wd = _row(table, "disk-full-during-checkpoint")
    assert "newest: 6" in result["stderr"]
    assert _steps(wd) == [2, 4, 6]
    for step in (2, 4, 6):
        assert _hashes(wd / "checkpoints" / str(step)) == \
            _hashes(trained / "checkpoints" / str(step))
    result, wd = _row(table, "disk-full-during-sampling")
    assert not [p for p in _shards(wd) if "seed9" in p]  # no partial shard was left
