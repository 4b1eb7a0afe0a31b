"""Subprocess side of tests/test_checkpoint.py: ``python ckpt_worker.py MODE DIRECTORY``.

Modes:
  restore8       restore the checkpoint the test saved (from one device) onto an 8-device mesh
                 (XLA_FLAGS set by the test); print shardings and values as one JSON line.
  kill_after     save step 1, wait until finished, print "saved", then SIGKILL itself.
  kill_mid       save step 1 and wait; start an async save of step 2 with a 64 MiB array, then
                 SIGKILL itself as soon as its files start to appear.
  write_fails    save step 1; with the file-size limit lowered below the next checkpoint's
                 size (a full disk, as the writer sees it), save step 2 and report the error;
                 then, the limit lifted, reopen the directory as a restarted job would and
                 report its steps after its first save and any temporary directories left.
"""
import glob
import resource
import json
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxdiff import parallel
from jaxdiff.checkpoint import Checkpointer


def small_state(step):
    return {"step": jnp.int32(step), "w": jnp.full((4,), float(step), jnp.float32)}


def restore8(directory):
    mesh = parallel.make_mesh(ConfigDict(dict(data=-1)))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    repl = parallel.replicated(mesh)
    target = {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),
        "params": {"w": jax.ShapeDtypeStruct((16, 3), jnp.float32, sharding=data),
                   "b": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=repl)},
        "key": jax.eval_shape(lambda: jax.random.key(0)),
    }
    target["key"] = jax.ShapeDtypeStruct(target["key"].shape, target["key"].dtype, sharding=repl)
    state, extra = Checkpointer(directory).restore(target=target)
    w = state["params"]["w"]
    print(json.dumps(dict(
        extra=extra,
        step=int(state["step"]),
        w=np.asarray(w).tolist(),
        w_devices=len(w.sharding.device_set),
        w_spec=[a for a in w.sharding.spec],
        w_shard_shapes=sorted({s.data.shape for s in w.addressable_shards}),
        b=np.asarray(state["params"]["b"]).tolist(),
        b_replicated=state["params"]["b"].sharding.is_fully_replicated,
        key_data=np.asarray(jax.random.key_data(state["key"])).tolist(),
        key_is_typed=bool(jnp.issubdtype(state["key"].dtype, jax.dtypes.prng_key)),
    )), flush=True)


def kill_after(directory):
    ckpt = Checkpointer(directory)
    ckpt.save(1, small_state(1), extra={"step": 1})
    ckpt.wait_until_finished()
    print("saved", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_mid(directory):
    ckpt = Checkpointer(directory)
    ckpt.save(1, small_state(1), extra={"step": 1})
    ckpt.wait_until_finished()
    big = {"step": jnp.int32(2), "w": jnp.full((4,), 2.0, jnp.float32),
           "big": jnp.ones((16 * 2**20,), jnp.float32)}
    jax.block_until_ready(big)
    ckpt.save(2, big, extra={"step": 2})
    # Kill once the array files have started to appear in the temporary step directory.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not glob.glob(
            os.path.join(directory, "2.orbax-checkpoint-tmp*", "state*", "*")):
        time.sleep(0.001)
    print("killing with", sorted(os.listdir(directory)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def write_fails(directory):
    ckpt = Checkpointer(directory, items=("model", "train"))
    ckpt.save(1, dict(model={"w": jnp.zeros(4)}, train={"step": jnp.int32(1)}), force=True)
    ckpt.wait_until_finished()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write past the limit: EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    big = jax.random.normal(jax.random.key(0), (4 << 20,))  # 16 MiB, incompressible
    result = {}
    try:
        ckpt.save(2, dict(model={"w": big}, train={"step": jnp.int32(2)}), force=True)
        ckpt.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        result = dict(error=type(e).__name__, message=str(e))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    restarted = Checkpointer(directory, items=("model", "train"))
    restarted.save(3, dict(model={"w": jnp.ones(4)}, train={"step": jnp.int32(3)}), force=True)
    restarted.wait_until_finished()
    result.update(steps_after_restart=restarted.all_steps(),
                  leftovers_after_restart=sorted(d for d in os.listdir(directory)
                                                 if not d.isdigit()))
    print(json.dumps(result), flush=True)
    os._exit(0)  # the failed background writer of the first manager is not joined


if __name__ == "__main__":
    {"restore8": restore8, "kill_after": kill_after, "kill_mid": kill_mid,
     "write_fails": write_fails}[sys.argv[1]](sys.argv[2])
