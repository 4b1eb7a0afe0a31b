"""Train steps called directly, in one process with 8 simulated CPU devices:
``python train_steps.py SPEC_JSON`` (the parent sets
XLA_FLAGS=--xla_force_host_platform_device_count=8).

SPEC_JSON: {"overrides": {dotted config field: value} for the config file "config" (default
configs/digits.py), "out": .npz path, "loss_steps": N}.

From one freshly built state and the batch of step 0 it runs
  * one step on a 1-device mesh (``jax.devices()[:1]``)        -> one/<path> in the .npz
  * the same step on the 8-device mesh of ``parallel.make_mesh`` -> eight/<path>
and continues the 1-device run to N steps (loss of every step -> ``losses``). The initial
state is saved as init/<path>; metrics of the first step as metrics_one / metrics_eight.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

from jaxdiff import parallel
from jaxdiff.jobs import train
from jaxdiff.data import BatchSampler, get_source, load_batch
from train_common import digits_config, flat_state

from jaxdiff.config import load_config_file


def fresh_copy(state):
    """A copy with its own buffers (the compiled step donates its state argument)."""
    return jax.tree.map(jnp.copy, state)


def main():
    spec = json.loads(sys.argv[1])
    config = (load_config_file(spec["config"], spec["overrides"]) if spec.get("config")
              else digits_config(spec["overrides"]))
    assert jax.device_count() == 8, jax.devices()
    source = get_source(config.data, "train")
    trainer, state = train.build_trainer(config, source.num_classes, source.example_shape)
    sampler = BatchSampler(num_examples=len(source), global_batch_size=int(config.train.batch_size),
                           seed=int(config.seed), process_index=0, process_count=1)

    def batch(step, mesh):
        x, label = load_batch(source, sampler, step, bool(config.data.random_flip))
        return parallel.global_batch(dict(x=x, label=label), mesh)

    out = {f"init/{k}": v for k, v in flat_state(state).items()}
    mesh8 = parallel.make_mesh(config.mesh)
    mesh1 = jax.make_mesh((1, 1), parallel.MESH_AXES, devices=jax.devices()[:1],
                          axis_types=(AxisType.Auto,) * 2)
    metrics = {}
    results = {}
    for name, mesh in (("eight", mesh8), ("one", mesh1)):
        step_fn, shard = train.compile_train_step(trainer, state, mesh)
        s = jax.device_put(fresh_copy(state), shard)
        s, m = step_fn(s, batch(0, mesh))
        results[name] = (step_fn, s)
        metrics[name] = {k: float(v) for k, v in jax.device_get(m).items()}
        out.update({f"{name}/{k}": v for k, v in flat_state(s).items()})
        first = jax.tree.leaves(s["model"]["params"])[0]
        out[f"{name}/sharded_over"] = np.int64(len(first.sharding.device_set))

    step_fn, s = results["one"]
    losses = [metrics["one"]["loss"]]
    for step in range(1, int(spec["loss_steps"])):
        s, m = step_fn(s, batch(step, mesh1))
        losses.append(m["loss"])
    out["losses"] = np.asarray(jax.device_get(losses), np.float64)
    np.savez(spec["out"], **out)
    print(json.dumps(dict(metrics=metrics, device_count=jax.device_count(),
                          mesh8=dict(mesh8.shape))), flush=True)


if __name__ == "__main__":
    main()
