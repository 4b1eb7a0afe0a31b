"""One process of a multi-process job: global mean of per-host data; prints one JSON line.

The parent sets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID and
XLA_FLAGS=--xla_force_host_platform_device_count=N. Process p holds the rows
p * L .. (p + 1) * L - 1 of the global batch arange(L * num_processes), L = 2 * local devices.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxdiff import parallel


def main():
    cfg = ConfigDict(dict(distributed="auto"))
    first = parallel.maybe_initialize_distributed(cfg)
    again = parallel.maybe_initialize_distributed(cfg)
    mesh = parallel.make_mesh(ConfigDict(dict(data=-1)))
    rows = 2 * jax.local_device_count()
    pid = jax.process_index()
    local = np.arange(pid * rows, (pid + 1) * rows, dtype=np.float32)[:, None]
    x = parallel.global_batch({"x": local}, mesh)["x"]
    params = {"w": np.full((4,), 2.0, np.float32)}
    w = parallel.shard_params(params, parallel.param_shardings(mesh, params, "replicate"))["w"]
    mean = jax.jit(lambda x: jnp.mean(x), out_shardings=parallel.replicated(mesh))(x)
    scaled = jax.jit(lambda w, x: jnp.mean(x) * jnp.sum(w),
                     out_shardings=parallel.replicated(mesh))(w, x)
    print(json.dumps(dict(
        initialized=[first, again], process_index=pid, process_count=jax.process_count(),
        device_count=jax.device_count(), global_shape=list(x.shape), mean=float(mean),
        scaled=float(scaled))), flush=True)


if __name__ == "__main__":
    main()
