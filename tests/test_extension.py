"""Adding a method is one new file plus its registration: the test-only kit of
tests/plugins/toy_method.py (a guidance transform and a two-network objective) reaches the command
line through ``config.imports`` with no job edited, and a two-network objective resumes
bit-exactly after SIGKILL (its auxiliary network, optimizer state and host-side counter too).
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxdiff.config import load_config_file
from jaxdiff.data import get_source
from jaxdiff.jobs.spec import open_checkpoints
from jaxdiff.jobs.train import build_trainer
from tests.helpers.compile_speed import cache_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "tests", "plugins", "toy_config.py")
TIMEOUT_S = 420


def _env(tmp_path_factory) -> dict:
    env = dict(os.environ)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"):
        env.pop(var, None)
    env.update(cache_env(tmp_path_factory), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]))
    return env


def _cli(args, env, wait=True):
    cmd = [sys.executable, "-m", "jaxdiff.main", f"--config={TOY}", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def _final_state(workdir) -> list[tuple[str, bytes]]:
    """Every leaf of checkpoint 6 (both items) as (path, bytes)."""
    config = load_config_file(TOY)
    src = get_source(config.data, "train")
    _, state = build_trainer(config, src.num_classes, src.example_shape)
    ckpt = open_checkpoints(str(workdir), async_save=False)
    assert ckpt.latest_step() == 6
    restored, _ = ckpt.restore(6, target=state)
    ckpt.close()
    leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
    out = []
    for path, leaf in leaves:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append((jax.tree_util.keystr(path), np.asarray(leaf).tobytes()))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ext") / "reference"
    proc = _cli([f"--workdir={workdir}"], _env(tmp_path_factory))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def test_two_network_objective_trains_through_the_cli(reference):
    summary = json.loads((reference / "train_summary.json").read_text())
    assert summary["step"] == 6 and summary["stopped"] == "finished"
    assert "aux_loss" in summary["last_metrics"]
    state = dict(_final_state(reference))
    counter = np.frombuffer(state["['train']['extra']['host_calls']"], np.int32)
    assert counter.tolist() == [6]  # host_update ran after each of the 6 logged steps
    assert any("['train']['extra']['aux_opt']" in k for k in state)


def test_two_network_objective_resumes_bit_exactly_after_sigkill(reference, tmp_path,
                                                                  tmp_path_factory):
    workdir = tmp_path / "run"
    env = _env(tmp_path_factory)
    proc = _cli([f"--workdir={workdir}"], env, wait=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not (workdir / "checkpoints" / "2").exists():
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert done and done[-1] < 6, f"killed too late: {done}"
    resumed = _cli([f"--workdir={workdir}"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"at step {done[-1]}" in resumed.stdout
    assert _final_state(workdir) == _final_state(reference)


def test_registered_guidance_reaches_the_sampling_job(reference, tmp_path_factory):
    """On the command line (the toy config's own guidance, a new value of its field), and
    in-process for the identity: shift 0 gives exactly the unguided samples."""
    from jaxdiff.jobs.sample import sample_job

    counts = ["--config.sample.num_samples=4", "--config.sample.shard_size=4",
              "--config.sample.steps=3"]
    proc = _cli([f"--workdir={reference}", "--mode=sample", *counts,
                 "--config.guidance.shift=-5.0", "--config.sample.out_name=shift_down"],
                _env(tmp_path_factory))
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = {"shift_down": None, "shift0": {}, "plain": dict(name="none")}
    samples, manifests = {}, {}
    for name, guidance in runs.items():
        if guidance is not None:
            config = load_config_file(TOY, {"sample.num_samples": 4, "sample.shard_size": 4,
                                            "sample.steps": 3, "sample.out_name": name})
            config.guidance.update(guidance)
            sample_job(config, str(reference))
        d = reference / "samples" / name
        samples[name] = np.load(d / "shard_00000.npz")["samples"]
        manifests[name] = json.loads((d / "manifest.json").read_text())
    assert manifests["shift0"]["guidance"] == {"name": "toy_shift", "shift": 0.0}
    assert manifests["shift_down"]["guidance"] == {"name": "toy_shift", "shift": -5.0}
    assert manifests["plain"]["guidance"] == {"name": "none"}
    np.testing.assert_array_equal(samples["shift0"], samples["plain"])  # shift 0: identity
    # x0_hat - 5 at every step: the (saturated, untrained) samples lose their white pixels
    assert (samples["shift_down"] == 255).sum() < (samples["plain"] == 255).sum()
