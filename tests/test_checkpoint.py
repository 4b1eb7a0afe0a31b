"""Tests for jaxdiff.checkpoint.Checkpointer (crash and multi-device cases in subprocesses)."""
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.checkpoint import Checkpointer
from jaxdiff.errors import CorruptDataError, IncompatibleCheckpointError, NonFiniteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "helpers", "ckpt_worker.py")
TIMEOUT_S = 180


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]))
    return env


def _run_worker(mode: str, directory, devices: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, WORKER, mode, str(directory)], env=_env(devices),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def _state():
    rng = np.random.default_rng(1)
    return {
        "step": jnp.int32(123),
        "epoch": 2**40 + 1,
        "params": {"dense": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                             "bias": jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16)},
                   "layers": [jnp.arange(4.0), jnp.asarray(np.float32(np.nan))]},
        "rng": jax.random.split(jax.random.key(42), 3),
        "data_pos": np.int64(2**40 + 3),
    }


def _raw(x):
    """Bytes-comparable NumPy view of a leaf (key data for typed keys)."""
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _assert_bit_exact(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert type(x) is type(y) or isinstance(y, jax.Array)
        assert getattr(x, "dtype", None) == getattr(y, "dtype", None)
        rx, ry = _raw(x), _raw(y)
        assert rx.dtype == ry.dtype and rx.shape == ry.shape
        assert rx.tobytes() == ry.tobytes()


def test_round_trip_is_bit_exact(tmp_path):
    state, extra = _state(), {"data_iterator": {"epoch": 2, "index": 17}, "note": "ok"}
    ckpt = Checkpointer(tmp_path / "ckpt")
    assert ckpt.latest_step() is None
    assert ckpt.save(123, state, extra=extra)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 123

    restored, restored_extra = ckpt.restore(target=state)
    _assert_bit_exact(state, restored)
    assert restored_extra == extra
    assert isinstance(restored["epoch"], int) and isinstance(restored["data_pos"], np.integer)
    assert jax.random.key_impl(restored["rng"]) == jax.random.key_impl(state["rng"])

    abstract = jax.eval_shape(lambda s: s, {k: v for k, v in state.items()
                                            if k not in ("epoch", "data_pos")})
    restored_abstract, _ = Checkpointer(tmp_path / "ckpt").restore(123, target={
        **abstract, "epoch": 0, "data_pos": np.int64(0)})
    _assert_bit_exact(state, restored_abstract)
    ckpt.close()


def test_keep_n_interval_and_latest_step(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2, async_save=False)
    saved = [ckpt.save(s, {"x": jnp.float32(s)}) for s in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]
    assert ckpt.save(7, {"x": jnp.float32(7)}, force=True)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path)) == ["6", "7"]
    assert ckpt.latest_step() == 7
    state, _ = ckpt.restore(6, target={"x": jnp.float32(0)})
    assert float(state["x"]) == 6.0
    ckpt.close()


def test_errors_name_the_directory_and_the_keys(tmp_path):
    empty = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        empty.restore(target={"x": jnp.zeros(2)})
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    ckpt.save(1, {"a": jnp.zeros(2), "b": {"c": jnp.ones(3)}})
    with pytest.raises(FileNotFoundError, match="step 5"):
        ckpt.restore(5, target={"a": jnp.zeros(2), "b": {"c": jnp.ones(3)}})
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"1 arrays only in the checkpoint \(b/c\), 1 only in the run \(b/d\)"):
        ckpt.restore(target={"a": jnp.zeros(2), "b": {"d": jnp.ones(3)}})
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"1 arrays differ in shape or dtype, e.g. b/c: \(3,\) float32 in the "
                             r"checkpoint, \(4,\) float32 in the run"):
        ckpt.restore(target={"a": jnp.zeros(2), "b": {"c": jnp.ones(4)}})
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path / "x", max_to_keep=0)


def test_restore_saved_on_one_device_onto_eight_devices(tmp_path):
    w = np.arange(48, dtype=np.float32).reshape(16, 3) / 7
    key = jax.random.key(9)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, {"step": jnp.int32(5), "params": {"w": jnp.asarray(w), "b": jnp.ones(3)},
                  "key": key}, extra={"origin": "one device"})
    ckpt.close()
    proc = _run_worker("restore8", tmp_path, devices=8)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["extra"] == {"origin": "one device"} and out["step"] == 5
    assert out["w_devices"] == 8 and out["w_spec"] == ["data"]
    assert out["w_shard_shapes"] == [[2, 3]]
    assert np.array_equal(np.asarray(out["w"], np.float32), w)
    assert out["b"] == [1.0, 1.0, 1.0] and out["b_replicated"]
    assert out["key_is_typed"]
    assert out["key_data"] == np.asarray(jax.random.key_data(key)).tolist()


def test_sigkill_after_finished_save_leaves_a_restorable_checkpoint(tmp_path):
    proc = _run_worker("kill_after", tmp_path)
    assert proc.returncode == -signal.SIGKILL and "saved" in proc.stdout, proc.stderr[-4000:]
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == 1
    state, extra = ckpt.restore(target={"step": jnp.int32(0), "w": jnp.zeros(4)})
    assert int(state["step"]) == 1 and np.all(np.asarray(state["w"]) == 1.0)
    assert extra == {"step": 1}


def test_sigkill_during_async_save_never_leaves_a_corrupt_latest(tmp_path):
    proc = _run_worker("kill_mid", tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    assert "killing with" in proc.stdout
    ckpt = Checkpointer(tmp_path)
    latest = ckpt.latest_step()
    assert latest in (1, 2)
    target = {"step": jnp.int32(0), "w": jnp.zeros(4)}
    if latest == 2:  # the save won the race: it must then be complete
        target["big"] = jax.ShapeDtypeStruct((16 * 2**20,), jnp.float32)
    state, extra = ckpt.restore(target=target)
    assert int(state["step"]) == latest and extra == {"step": latest}
    assert np.all(np.asarray(state["w"]) == float(latest))
    if latest == 2:
        assert np.all(np.asarray(state["big"]) == 1.0)
    # The resumed run saves again; the crashed save's temporary directory is gone by then.
    ckpt.save(3, {"step": jnp.int32(3), "w": jnp.zeros(4)}, extra={"step": 3})
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 3
    assert not [name for name in os.listdir(tmp_path) if "tmp" in name]
    ckpt.close()


def _two_checkpoints(directory, **kwargs):
    ckpt = Checkpointer(directory, async_save=False, items=("model", "train"), **kwargs)
    for step in (2, 4):
        ckpt.save(step, dict(model={"w": jnp.full((64,), step, jnp.float32)},
                             train={"step": jnp.int32(step)}), force=True)
    return ckpt


def _target():
    return dict(model={"w": jax.ShapeDtypeStruct((64,), jnp.float32)},
                train={"step": jax.ShapeDtypeStruct((), jnp.int32)})


def _truncate_data_files(step_dir, item="model"):
    for root, _, files in os.walk(os.path.join(step_dir, item, "d")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def test_unreadable_newest_checkpoint_is_moved_aside_and_the_older_one_restored(tmp_path,
                                                                                capfd):
    ckpt = _two_checkpoints(tmp_path / "ckpt")
    _truncate_data_files(tmp_path / "ckpt" / "4")
    restored, _ = ckpt.restore(target=_target())
    assert int(restored["train"]["step"]) == 2
    np.testing.assert_array_equal(restored["model"]["w"], np.full(64, 2, np.float32))
    assert ckpt.all_steps() == [2]
    assert sorted(os.listdir(tmp_path / "ckpt.corrupt")) == ["4"]   # kept, not deleted
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxdiff: warning: checkpoint 4 in ")
    assert "unreadable" in err[0] and "using step 2" in err[0]
    # Asked for by step, an unreadable checkpoint is an error naming the others.
    ckpt2 = _two_checkpoints(tmp_path / "other")
    _truncate_data_files(tmp_path / "other" / "4", "train")
    with pytest.raises(CorruptDataError, match=r"checkpoint 4 in .* is unreadable .*\[2\]"):
        ckpt2.restore(4, target=_target())
    assert ckpt2.all_steps() == [2, 4]


def test_require_finite_refuses_to_save_and_skips_non_finite_checkpoints(tmp_path):
    plain = _two_checkpoints(tmp_path / "ckpt")
    plain.save(6, dict(model={"w": jnp.full((64,), jnp.nan)}, train={"step": jnp.int32(6)}),
               force=True)
    strict = Checkpointer(tmp_path / "ckpt", async_save=False, items=("model", "train"),
                          require_finite=True)
    restored, _ = strict.restore(target=_target())
    assert int(restored["train"]["step"]) == 4 and strict.all_steps() == [2, 4]
    with pytest.raises(NonFiniteError, match="refusing to save checkpoint 8"):
        strict.save(8, dict(model={"w": jnp.full((64,), jnp.inf)},
                            train={"step": jnp.int32(8)}), force=True)
    assert strict.all_steps() == [2, 4]
    # A manager opened before the move sees it too.
    assert int(plain.restore(target=_target())[0]["train"]["step"]) == 4


def test_failed_write_is_one_error_naming_the_intact_checkpoint(tmp_path):
    proc = _run_worker("write_fails", tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] == "RunEnvironmentError", out
    assert "could not write checkpoint 2" in out["message"], out
    assert "newest: 1" in out["message"], out
    assert out["steps_after_restart"] == [1, 3] and out["leftovers_after_restart"] == [], out
