"""Tests for jaxdiff.parallel: 8 simulated devices and a 2-process job, each in subprocesses."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest
from ml_collections import ConfigDict

from jaxdiff import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = os.path.join(ROOT, "tests", "helpers")
TIMEOUT_S = 180


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]), **extra)
    return env


def _last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rng = np.random.default_rng(0)
    return dict(
        x=rng.normal(size=(64, 16)).astype(np.float32),
        w=rng.normal(size=(16,)).astype(np.float32),
        xb=rng.normal(size=(16, 256)).astype(np.float32),
        big_w=(rng.normal(size=(256, 512)) / 16).astype(np.float32),
        big_b=rng.normal(size=(512,)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def eight(inputs, tmp_path_factory):
    """Results of tests/helpers/parallel_8dev.py: (JSON dict, arrays)."""
    tmp = tmp_path_factory.mktemp("par8")
    np.savez(tmp / "in.npz", **inputs)
    proc = subprocess.run(
        [sys.executable, os.path.join(HELPERS, "parallel_8dev.py"), str(tmp / "in.npz"),
         str(tmp / "out.npz")],
        env=_env(8), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _last_json_line(proc.stdout), dict(np.load(tmp / "out.npz"))


def test_make_mesh_shapes_and_errors(eight):
    out, _ = eight
    assert out["device_count"] == 8
    assert out["auto_shape"] == {"data": 8, "fsdp": 1}
    assert out["fsdp_shape"] == {"data": 4, "fsdp": 2}
    assert "config.mesh" in out["bad_product_error"] and "8" in out["bad_product_error"]
    assert "config.mesh.fsdp" in out["bad_fsdp_error"]


def test_make_mesh_validates_on_one_device():
    with pytest.raises(ValueError, match="config.mesh.data"):
        parallel.make_mesh(ConfigDict(dict(data=0)))
    with pytest.raises(ValueError, match="config.mesh.fsdp"):
        parallel.make_mesh(ConfigDict(dict(data=1, fsdp=1.5)))
    mesh = parallel.make_mesh(ConfigDict(dict()))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_data_parallel_loss_and_grad_match_single_device(eight, inputs):
    out, arrays = eight
    assert out["x_shard_shapes"] == [[8, 16]]  # 64 rows over 8 devices
    loss, grad = jax.jit(jax.value_and_grad(lambda w, x: jnp.mean((x @ w) ** 2)))(
        inputs["w"], inputs["x"])
    np.testing.assert_allclose(out["loss"], float(loss), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(arrays["grad"], np.asarray(grad), rtol=1e-6, atol=1e-6)


def test_fsdp_shards_large_params_and_matmul_matches(eight, inputs):
    out, arrays = eight
    assert out["w_spec"] == [None, "fsdp"]  # largest divisible dim: 512
    assert out["w_shard_shape"] == [256, 256]
    assert out["b_spec"] == []  # 512 elements < min_size
    assert out["repl_w_spec"] == []
    assert out["fsdp_vs_repl_max_abs"] <= 1e-5
    reference = inputs["xb"].astype(np.float64) @ inputs["big_w"] + inputs["big_b"]
    np.testing.assert_allclose(arrays["y_fsdp"], reference, rtol=1e-4, atol=1e-4)


def test_global_batch_assembles_the_global_array(eight):
    out, _ = eight
    assert out["global_shapes"] == {"img": [16, 16], "label": [16]}
    assert out["global_specs"] == {"img": [["data", "fsdp"]], "label": [["data", "fsdp"]]}
    assert out["global_equal"]
    assert out["label_shards"] == [[2 * i, 2 * i + 1] for i in range(8)]
    assert "config.batch_size" in out["batch_error"]
    assert out["local_batch"] == 16


def test_param_shardings_rules_on_one_device():
    mesh = parallel.make_mesh(ConfigDict(dict(data=1, fsdp=1)))
    params = {"w": jnp.zeros((256, 512)), "scale": 1.0}
    shard = parallel.param_shardings(mesh, params, "fsdp")
    assert shard["w"].spec == jax.sharding.PartitionSpec()  # fsdp axis of size 1
    assert shard["scale"].spec == jax.sharding.PartitionSpec()
    with pytest.raises(ValueError, match="config.mesh.param_rule.*'tensor'"):
        parallel.param_shardings(mesh, params, "tensor")


def test_fsdp_spec_picks_largest_divisible_dim():
    spec = parallel._fsdp_spec
    assert spec((3, 3, 128, 256), 2, 1) == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert spec((1024, 3), 4, 1) == jax.sharding.PartitionSpec("fsdp")
    assert spec((1024, 3), 3, 1) == jax.sharding.PartitionSpec(None, "fsdp")  # only 3 divides
    assert spec((1025, 7), 4, 1) == jax.sharding.PartitionSpec()
    assert spec((64, 64), 4, 2**14) == jax.sharding.PartitionSpec()  # too small


def test_maybe_initialize_distributed_is_a_noop_on_one_host(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.maybe_initialize_distributed(ConfigDict(dict(distributed="auto"))) is False
    assert parallel.maybe_initialize_distributed(None) is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert parallel.maybe_initialize_distributed(ConfigDict(dict(distributed="auto"))) is False
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        parallel.maybe_initialize_distributed(None)
    with pytest.raises(ValueError, match="config.distributed"):
        parallel.maybe_initialize_distributed(ConfigDict(dict(distributed="yes")))


@pytest.mark.parametrize("local_devices", [1, 2])
def test_two_processes_compute_the_same_global_mean(local_devices):
    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(HELPERS, "multihost_mean.py")],
            env=_env(local_devices, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in range(2)
    ]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, stderr[-4000:]
            results.append(_last_json_line(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rows = 2 * local_devices * 2
    expected_mean = (rows - 1) / 2  # mean of arange(rows)
    for pid, r in enumerate(results):
        assert r["initialized"] == [True, True]
        assert r["process_index"] == pid and r["process_count"] == 2
        assert r["device_count"] == 2 * local_devices
        assert r["global_shape"] == [rows, 1]
        assert r["mean"] == pytest.approx(expected_mean, abs=1e-6)
        assert r["scaled"] == pytest.approx(expected_mean * 8.0, abs=1e-5)
    assert results[0]["mean"] == results[1]["mean"]
