"""Runs jaxdiff.parallel on 8 simulated CPU devices and prints the results as one JSON line.

Launched by tests/test_parallel.py with XLA_FLAGS=--xla_force_host_platform_device_count=8;
argv[1] is a .npz file with the inputs (x, w, xb, big_w, big_b) written by the test; arrays it
computes go to the .npz file argv[2].
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxdiff import parallel


def error_of(fn):
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def spec(array):
    """The array's PartitionSpec as JSON: one entry per dim, None / axis name / list of names."""
    return [list(a) if isinstance(a, tuple) else a for a in array.sharding.spec]


def main():
    inputs = np.load(sys.argv[1])
    out = {"device_count": jax.device_count()}
    out["auto_shape"] = dict(parallel.make_mesh(ConfigDict(dict(data=-1))).shape)
    mesh = parallel.make_mesh(ConfigDict(dict(data=4, fsdp=2)))
    out["fsdp_shape"] = dict(mesh.shape)
    out["bad_product_error"] = error_of(
        lambda: parallel.make_mesh(ConfigDict(dict(data=3, fsdp=2))))
    out["bad_fsdp_error"] = error_of(lambda: parallel.make_mesh(ConfigDict(dict(data=-1, fsdp=3))))

    # Data-parallel loss and gradient over a batch sharded on all 8 devices.
    mesh8 = parallel.make_mesh(ConfigDict(dict(data=-1)))
    x = jax.device_put(inputs["x"], parallel.batch_sharding(mesh8))
    w = jax.device_put(inputs["w"], parallel.replicated(mesh8))
    loss_and_grad = jax.jit(jax.value_and_grad(lambda w, x: jnp.mean((x @ w) ** 2)))
    loss, grad = loss_and_grad(w, x)
    out["x_shard_shapes"] = sorted({s.data.shape for s in x.addressable_shards})
    out["loss"] = float(loss)

    # FSDP parameters on the (4, 2) mesh; a matmul with them against the replicated placement.
    params = {"w": inputs["big_w"], "b": inputs["big_b"]}
    shardings = parallel.param_shardings(mesh, params, "fsdp")
    sharded = parallel.shard_params(params, shardings)
    repl = parallel.shard_params(params, parallel.param_shardings(mesh, params, "replicate"))
    out["w_spec"] = spec(sharded["w"])
    out["b_spec"] = spec(sharded["b"])
    out["w_shard_shape"] = list(sharded["w"].addressable_shards[0].data.shape)
    out["repl_w_spec"] = spec(repl["w"])
    xb = jax.device_put(inputs["xb"], parallel.batch_sharding(mesh))
    apply = jax.jit(lambda p, x: x @ p["w"] + p["b"])
    y_fsdp = np.asarray(apply(sharded, xb))
    y_repl = np.asarray(apply(repl, xb))
    out["fsdp_vs_repl_max_abs"] = float(np.max(np.abs(y_fsdp - y_repl)))

    # Host-local batch -> global array (one process: the global batch is the local one).
    local = {"img": inputs["x"][:16], "label": np.arange(16, dtype=np.int32)}
    glob = parallel.global_batch(local, mesh8)
    out["global_shapes"] = {k: list(v.shape) for k, v in glob.items()}
    out["global_specs"] = {k: spec(v) for k, v in glob.items()}
    out["global_equal"] = all(np.array_equal(np.asarray(glob[k]), local[k]) for k in local)
    out["label_shards"] = sorted(
        np.asarray(s.data).tolist() for s in glob["label"].addressable_shards)
    out["batch_error"] = error_of(lambda: parallel.check_batch_divisible(12, mesh8))
    out["local_batch"] = parallel.check_batch_divisible(16, mesh8)
    np.savez(sys.argv[2], grad=np.asarray(grad), y_fsdp=y_fsdp)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
