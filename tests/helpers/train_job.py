"""Runs ``jaxdiff.jobs.train.train`` as a job: ``python train_job.py SPEC_JSON``.

SPEC_JSON: {"workdir": str, "overrides": {dotted config field: value} applied to
configs/digits.py, "out": optional .npz path, "{process}" replaced by the process index}.

The step function ``train.train`` compiles is wrapped by an observer that keeps the latest state
it returned (it changes nothing the job computes), so after the job each process writes ITS OWN
in-memory final state to ``out``. Prints the summary as the last stdout line (JSON).
Multi-process runs get JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID from the
parent; ``train.train`` initialises jax.distributed through ``config.distributed='auto'``.
"""
import json
import sys

import jax
import numpy as np

from jaxdiff.jobs import train
from train_common import digits_config, flat_state


def main():
    spec = json.loads(sys.argv[1])
    config = digits_config(spec.get("overrides", {}))
    observed = {}
    compile_train_step = train.compile_train_step

    def compile_observed(trainer, state, mesh):
        step_fn, shard = compile_train_step(trainer, state, mesh)

        def step(state, batch):
            new_state, metrics = step_fn(state, batch)
            observed["state"] = new_state
            return new_state, metrics

        return step, shard

    train.compile_train_step = compile_observed
    summary = train.train(config, spec["workdir"])
    if spec.get("out") and "state" in observed:
        path = spec["out"].replace("{process}", str(jax.process_index()))
        np.savez(path, **flat_state(observed["state"]))
    print(json.dumps(dict(summary, process_index=jax.process_index())), flush=True)


if __name__ == "__main__":
    main()
