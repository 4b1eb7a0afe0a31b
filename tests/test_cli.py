"""Tests for the command line (``python -m jaxdiff.main``) and launch/local_2host.sh.

Bad configs must fail before anything is compiled: the error runs get JAX_LOG_COMPILES=1, which
makes jax log every compilation to stderr, so "stderr is exactly the one error line" also
proves that nothing was compiled (the smoke run checks that these logs do appear).
"""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "digits.py")
TIMEOUT_S = 420

# A reduced digits job (as in tests/test_train.py JOB, so the compiled programs are shared
# through the persistent compilation cache).
TINY_FLAGS = ["--config.model.base_channels=8", "--config.model.channel_mult=(1,)",
              "--config.train.batch_size=16", "--config.train.progress_bar=False",
              "--config.sample.steps=2", "--config.sample.grid_per_class=1",
              "--config.train.num_steps=6", "--config.train.checkpoint_every=2",
              "--config.train.sample_every=2", "--config.train.log_every=1"]


def _env(tmp_path_factory, devices: int = 1, **extra) -> dict:
    cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
    cache.mkdir(exist_ok=True)
    env = dict(os.environ)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
               PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]), **extra)
    return env


def _cli(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxdiff.main", f"--config={DIGITS}", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("flags, devices, field", [
    (["--config.model.name=foo"], 1, "model.name"),
    (["--config.optim.lr=-1"], 1, "optim.lr"),
    (["--config.train.batch_size=12"], 8, "train.batch_size"),
    (["--config.data.name=nope"], 1, "data.name"),
    (["--config.sample.sampler=nope"], 1, "sample.sampler"),
    # only detectable against the dataset (8x8 images cannot be halved 4 times)
    (["--config.model.channel_mult=(1,2,2,2,2)"], 1, "model.channel_mult"),
], ids=["network", "lr", "batch-vs-8-devices", "dataset", "sampler", "model-vs-data"])
def test_bad_config_fails_before_compiling_with_one_line(flags, devices, field, tmp_path,
                                                         tmp_path_factory):
    workdir = tmp_path / "run"
    proc = _cli([f"--workdir={workdir}", *flags],
                _env(tmp_path_factory, devices, JAX_LOG_COMPILES="1"))
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-4000:]
    assert lines[0].startswith(f"jaxdiff: error: config.{field}"), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not workdir.exists()  # failed before the job started writing


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    proc = _cli([f"--workdir={workdir}", *TINY_FLAGS],
                _env(tmp_path_factory, 1, JAX_LOG_COMPILES="1"))
    return proc, workdir


def test_cli_smoke_run_writes_samples_summary_and_checkpoint(smoke):
    proc, workdir = smoke
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The compile log that the error tests rely on is really on stderr in this setup.
    assert re.search(r"Compiling jit\(train_step\)|Finished .* train_step", proc.stderr)
    assert "Traceback" not in proc.stderr
    assert os.path.getsize(workdir / "samples" / "final.png") > 0
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["step"] == 6 and summary["stopped"] == "finished"
    assert summary["sample_grid"] == str(workdir / "samples" / "final.png")
    assert summary["processes"] == 1 and summary["devices"] == 1
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [2, 4, 6]
    assert "step 6/6" in proc.stdout


def test_local_2host_script_trains_one_job_on_two_processes(tmp_path, tmp_path_factory):
    workdir = tmp_path / "run"
    env = _env(tmp_path_factory, 1, DEVICES_PER_HOST="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_2host.sh"), DIGITS,
                           str(workdir), *TINY_FLAGS], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:] + (workdir / "host1.log").read_text()[-2000:]
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == 2
    assert summary["step"] == 6 and summary["stopped"] == "finished"
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [2, 4, 6]
    assert (workdir / "samples" / "final.png").is_file()
    assert "Traceback" not in (workdir / "host1.log").read_text()


def test_local_2host_script_fails_when_a_process_fails(tmp_path, tmp_path_factory):
    proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_2host.sh"), DIGITS,
                           str(tmp_path / "run"), "--config.optim.lr=-1"],
                          env=_env(tmp_path_factory, 1, PYTHON=sys.executable), cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode != 0
    assert "jaxdiff: error: config.optim.lr" in proc.stderr


def test_checkpoint_of_the_earlier_layout_is_one_line_naming_the_fix(tmp_path, tmp_path_factory):
    import numpy as np

    from jaxdiff.checkpoint import Checkpointer

    old = Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)  # one 'state' item
    old.save(3, {"step": np.int32(3), "params": {"w": np.zeros(2, np.float32)}}, force=True)
    old.close()
    proc = _cli([f"--workdir={tmp_path / 'run'}", "--mode=sample"], _env(tmp_path_factory))
    assert proc.returncode == 1, proc.stderr[-4000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert lines[0].startswith("jaxdiff: error: checkpoint 3 in ") and "train again" in lines[0]
