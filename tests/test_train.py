"""Tests for the training job (jaxdiff.jobs.train), each run in subprocesses:

* one step on 8 simulated devices equals the single-device step; EMA after one step; the loss of
  the digits config drops in a short run (tests/helpers/train_steps.py, one 8-device process);
* SIGKILL / SIGTERM during ``jaxdiff.jobs.train.train`` and resume reproduce an uninterrupted run bit for bit
  (tests/helpers/train_job.py);
* a 2-process ``jax.distributed`` job ends with identical state on both processes.

All subprocesses share one persistent XLA compilation cache (in pytest's tmp dir, also used by
tests/test_cli.py), so the same train step / sampler is compiled once per session rather than once
per process; the 8-device process and the uninterrupted reference job run concurrently.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from tests.helpers import compile_speed

# One worker runs the whole module: its module-scoped runs are built once.
pytestmark = pytest.mark.xdist_group("train")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = os.path.join(ROOT, "tests", "helpers")
TIMEOUT_S = 420

# A reduced digits model; everything else is configs/digits.py.
TINY = {"model.base_channels": 8, "model.channel_mult": [1], "train.batch_size": 16,
        "train.progress_bar": False, "sample.steps": 2, "sample.grid_per_class": 1,
        "train.sample_every": 0}
# The job of the resume tests: 6 steps, a checkpoint every 2, a preview grid at steps 2 and 4
# (the previews take a while, which leaves time to interrupt the job between checkpoints).
JOB = dict(TINY, **{"train.num_steps": 6, "train.checkpoint_every": 2, "train.sample_every": 2,
                    "train.log_every": 1})
EMA_DECAY = 0.9
LOSS_STEPS = 80
# Direct step calls: no lr warm-up (so step 0 moves the parameters) and no EMA warm-up.
STEPS = dict(TINY, **{"train.num_steps": LOSS_STEPS, "optim.warmup_steps": 0,
                      "train.ema_warmup": False, "train.ema_decays": [EMA_DECAY]})
# The test-only kit (tests/plugins): its network and its two-network objective, whose extra
# state (an auxiliary network and its Adam state) must shard like any other state.
TWO_NET = os.path.join(ROOT, "tests", "plugins", "toy_config.py")
TWO_NET_STEPS = {"optim.warmup_steps": 0, "train.ema_warmup": False}


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    return compile_speed.cache_env(tmp_path_factory)


def _env(cache_env, devices: int = 1, **extra) -> dict:
    env = dict(os.environ)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    flags = env.get("XLA_FLAGS", "")
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", flags)
    env.update(cache_env, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
               PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]), **extra)
    return env


def _job(spec: dict, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(HELPERS, "train_job.py"),
                             json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, expect_rc: int = 0) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == expect_rc, f"rc {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return out, err


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _checkpoints(workdir) -> list[int]:
    """Finished checkpoint steps (Orbax renames a step's temporary directory when it is done)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _wait_for(proc: subprocess.Popen, path: str, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"job ended (rc {proc.returncode}) before {what}\n{out[-2000:]}\n"
                        f"{err[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no {what} within {TIMEOUT_S} s")
        time.sleep(0.01)


def _logged_steps(stdout: str) -> list[int]:
    return [int(m) for m in re.findall(r"^step (\d+)/", stdout, flags=re.M)]


def _assert_same_state(a: dict, b: dict, atol: float = 0.0):
    """Every leaf of two flat state dumps equal (bit for bit when atol == 0)."""
    assert sorted(a) == sorted(b)
    for section in ("model/params/", "train/opt_state/", "model/ema/0/"):
        assert any(k.startswith(section) for k in a), section
    assert "train/step" in a and "train/rng" in a
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        if atol == 0.0:
            assert x.tobytes() == y.tobytes(), f"{k} differs"
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=k)


# ------------------------------------------------------------------------------------------------
# direct step calls on 8 simulated devices
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launched(tmp_path_factory, cache_env):
    """Starts the independent expensive subprocesses at once (2 cores: they overlap):
    tests/helpers/train_steps.py on 8 devices for the digits config and for the test-only
    two-network objective, and an uninterrupted 6-step job."""
    tmp = tmp_path_factory.mktemp("launched")
    steps_spec = dict(overrides=STEPS, out=str(tmp / "steps.npz"), loss_steps=LOSS_STEPS)
    two_spec = dict(config=TWO_NET, overrides=TWO_NET_STEPS, out=str(tmp / "two_net.npz"),
                    loss_steps=1)
    ref_spec = dict(workdir=str(tmp / "reference"), overrides=JOB, out=str(tmp / "ref.npz"))

    def steps_proc(spec):
        return subprocess.Popen([sys.executable, os.path.join(HELPERS, "train_steps.py"),
                                 json.dumps(spec)], env=_env(cache_env, 8),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = dict(steps=steps_proc(steps_spec), two_net=steps_proc(two_spec),
                 reference=_job(ref_spec, _env(cache_env)))
    yield tmp, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def steps(launched):
    """(JSON line, arrays) of tests/helpers/train_steps.py in an 8-device process."""
    tmp, procs = launched
    out, _ = _finish(procs["steps"])
    return _summary(out), dict(np.load(tmp / "steps.npz"))


def _section(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items()
            if k.startswith(prefix) and k != prefix + "sharded_over"}


def test_step_on_8_devices_matches_single_device(steps):
    info, arrays = steps
    assert info["device_count"] == 8 and info["mesh8"] == {"data": 8, "fsdp": 1}
    assert arrays["eight/sharded_over"] == 8 and arrays["one/sharded_over"] == 1
    one, eight, init = (_section(arrays, p) for p in ("one/", "eight/", "init/"))
    # The step did move the parameters (lr 2e-3, Adam), so the comparison is not vacuous.
    moved = max(float(np.max(np.abs(one[k] - init[k]))) for k in one
                if k.startswith("model/params/"))
    assert moved > 1e-3
    _assert_same_state(one, eight, atol=1e-5)
    assert one["train/step"] == eight["train/step"] == 1
    m1, m8 = info["metrics"]["one"], info["metrics"]["eight"]
    assert m1["loss"] == pytest.approx(m8["loss"], rel=1e-5)
    assert m1["grad_norm"] == pytest.approx(m8["grad_norm"], rel=1e-5)


def test_two_network_objective_on_8_devices_matches_single_device(launched):
    tmp, procs = launched
    _finish(procs["two_net"])
    arrays = dict(np.load(tmp / "two_net.npz"))
    one, eight, init = (_section(arrays, p) for p in ("one/", "eight/", "init/"))
    extra = [k for k in one if k.startswith("train/extra/aux/")]
    assert extra and all(k in eight for k in extra)
    moved = max(float(np.max(np.abs(one[k] - init[k]))) for k in extra)
    assert moved > 1e-4  # the auxiliary network was trained by the step
    _assert_same_state(one, eight, atol=1e-5)


@pytest.mark.parametrize("mesh", ["one", "eight"])
def test_ema_after_one_step_without_warmup(steps, mesh):
    _, arrays = steps
    state, init = _section(arrays, f"{mesh}/"), _section(arrays, "init/")
    names = [k[len("model/params/"):] for k in state if k.startswith("model/params/")]
    assert names and sorted(names) == sorted(k[len("model/ema/0/"):] for k in state
                                              if k.startswith("model/ema/0/"))
    d, c = np.float32(EMA_DECAY), np.float32(1.0 - EMA_DECAY)
    for name in names:
        p0, p1, ema = (init[f"model/params/{name}"], state[f"model/params/{name}"],
                       state[f"model/ema/0/{name}"])
        # d * init + (1 - d) * params with one rounding: XLA fuses the multiply-add on CPU, so
        # NumPy's two-rounding evaluation may differ in the last bit; allow exactly that.
        exact = (d.astype(np.float64) * p0 + c.astype(np.float64) * p1).astype(np.float32)
        np.testing.assert_array_max_ulp(ema, exact, maxulp=1)
    # EMA with warm-up would have used decay min(0.9, 2/11): far from this.
    name = max(names, key=lambda n: np.max(np.abs(state[f"model/params/{n}"]
                                                  - init[f"model/params/{n}"])))
    p0, p1 = init[f"model/params/{name}"], state[f"model/params/{name}"]
    assert np.max(np.abs(state[f"model/ema/0/{name}"] - p0)) > 1e-4
    assert np.max(np.abs(state[f"model/ema/0/{name}"] - p1)) > 1e-4


def test_digits_loss_drops_in_a_short_run(steps):
    _, arrays = steps
    losses = arrays["losses"]
    assert losses.shape == (LOSS_STEPS,) and np.all(np.isfinite(losses))
    first, last = losses[:10].mean(), losses[-10:].mean()
    assert first > 0.8  # eps-prediction starts near E[eps^2] = 1
    assert last < 0.6 * first, (first, last)


# ------------------------------------------------------------------------------------------------
# kill / SIGTERM / resume through jaxdiff.jobs.train.train
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(launched):
    """An uninterrupted 6-step job: (summary, final state, workdir)."""
    tmp, procs = launched
    out, _ = _finish(procs["reference"])
    return _summary(out), dict(np.load(tmp / "ref.npz")), tmp / "reference"


def test_uninterrupted_job_writes_checkpoints_and_samples(reference):
    summary, state, workdir = reference
    assert summary["step"] == 6 and summary["stopped"] == "finished"
    assert _checkpoints(workdir) == [2, 4, 6]
    for name in ("step_0000002.png", "step_0000004.png", "final.png"):
        assert os.path.isfile(os.path.join(workdir, "samples", name))
    assert int(state["train/step"]) == 6


def _resume(tmp, workdir, cache_env, expect_from: int) -> dict:
    spec = dict(workdir=str(workdir), overrides=JOB, out=str(tmp / "resumed.npz"))
    out, _ = _finish(_job(spec, _env(cache_env)))
    assert f"at step {expect_from}" in out, out[-2000:]
    assert _logged_steps(out) == list(range(expect_from + 1, 7))  # only the remaining steps
    summary = _summary(out)
    assert summary["step"] == 6 and summary["stopped"] == "finished"
    assert _checkpoints(workdir)[-1] == 6
    return dict(np.load(tmp / "resumed.npz"))


def test_sigkill_then_resume_matches_uninterrupted_run(reference, tmp_path, cache_env):
    _, expected, _ = reference
    workdir = tmp_path / "run"
    proc = _job(dict(workdir=str(workdir), overrides=JOB), _env(cache_env))
    _wait_for(proc, str(workdir / "checkpoints" / "2"), "checkpoint 2")
    proc.send_signal(signal.SIGKILL)
    _finish(proc, expect_rc=-signal.SIGKILL)
    done = _checkpoints(workdir)
    assert done and done[-1] in (2, 4), f"killed too late: checkpoints {done}"
    resumed = _resume(tmp_path, workdir, cache_env, expect_from=done[-1])
    _assert_same_state(resumed, expected)


def test_sigterm_checkpoints_current_step_then_resume_matches(reference, tmp_path, cache_env):
    _, expected, _ = reference
    workdir = tmp_path / "run"
    # No periodic checkpoints: the only one must come from the SIGTERM.
    overrides = dict(JOB, **{"train.checkpoint_every": 0})
    proc = _job(dict(workdir=str(workdir), overrides=overrides), _env(cache_env))
    _wait_for(proc, str(workdir / "samples" / "step_0000002.png"), "the step-2 preview")
    proc.send_signal(signal.SIGTERM)
    out, _ = _finish(proc, expect_rc=0)
    summary = _summary(out)
    stopped = summary["step"]
    assert summary["stopped"] == f"signal {int(signal.SIGTERM)}", summary
    assert 2 <= stopped < 6
    assert _checkpoints(workdir) == [stopped]
    assert summary["sample_grid"] is None
    assert not os.path.exists(workdir / "samples" / "final.png")
    resumed = _resume(tmp_path, workdir, cache_env, expect_from=stopped)
    _assert_same_state(resumed, expected)


# ------------------------------------------------------------------------------------------------
# two processes
# ------------------------------------------------------------------------------------------------

def test_two_process_job_ends_with_identical_state(reference, tmp_path, cache_env):
    _, single, _ = reference
    port = portpicker.pick_unused_port()
    workdir = tmp_path / "shared_run"
    spec = dict(workdir=str(workdir), overrides=JOB, out=str(tmp_path / "state_{process}.npz"))
    procs = [_job(spec, _env(cache_env, 1, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                             JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)))
             for pid in range(2)]
    try:
        outs = [_finish(p)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    summaries = [_summary(o) for o in outs]
    for pid, s in enumerate(summaries):
        assert s["process_index"] == pid and s["processes"] == 2 and s["devices"] == 2
        assert s["step"] == 6 and s["stopped"] == "finished"
    assert _logged_steps(outs[0]) == list(range(1, 7)) and _logged_steps(outs[1]) == []
    assert _checkpoints(workdir) == [2, 4, 6]
    states = [dict(np.load(tmp_path / f"state_{pid}.npz")) for pid in range(2)]
    _assert_same_state(states[0], states[1])
    # Same global batches as the single-process run; only reduction order differs.
    _assert_same_state(states[0], single, atol=1e-5)
