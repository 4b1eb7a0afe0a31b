"""Tests for the command line (``python -m jaxdiff.main``) and launch/local_2host.sh.

Bad configs must fail before anything is compiled: the error runs get JAX_LOG_COMPILES=1, which
makes jax log every compilation to stderr, so "stderr is exactly the one error line" also
proves that nothing was compiled (the fault table's trained run, tests/test_faults.py, checks
that these logs do appear, and what a CLI run writes).
"""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers.cli import DIGITS, ROOT, TIMEOUT_S, TINY_FLAGS
from tests.helpers.cli import cli as _cli
from tests.helpers.cli import cli_env as _env


# The other malformed inputs are rows of the fault table (tests/test_faults.py); this one needs
# a process with 8 devices.
@pytest.mark.parametrize("flags, devices, field", [
    (["--config.train.batch_size=12"], 8, "train.batch_size"),
], ids=["batch-vs-8-devices"])
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
