"""Device mesh, sharding rules and multi-host initialisation.

One job uses one 2-D ``Mesh`` with axes ``('data', 'fsdp')``:

  * the leading (batch) axis of every batch is sharded over both axes together, so every device
    holds ``global_batch / (data * fsdp)`` examples;
  * parameters are either replicated, or (rule ``'fsdp'``) each large array is split along one
    dimension over the ``'fsdp'`` axis and gathered by XLA where it is used.

Both mesh axes use ``AxisType.Auto`` (ordinary sharding propagation): in jax 0.10
``jax.make_mesh`` defaults to explicit axes, under which e.g. an embedding gather fails with a
``ShardingTypeError``.

Multi-host: every process calls ``maybe_initialize_distributed`` before touching any device,
builds the same mesh over all global devices, and turns its host-local slice of the batch into a
global array with ``global_batch``.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.errors import ConfigError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
PARAM_RULES = ("replicate", "fsdp")
DEFAULT_FSDP_MIN_SIZE = 2**14

# Explicit multi-process launch (the variables jax.distributed.initialize itself reads).
_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"
TIMEOUT_ENV = "JAXDIFF_DISTRIBUTED_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


def _distributed_mode(cfg) -> bool | str:
    """Reads ``cfg.distributed`` (True, False or 'auto'; missing or ``cfg is None`` -> 'auto')."""
    mode = "auto" if cfg is None else cfg.get("distributed", "auto")
    if mode is None:
        mode = "auto"
    if isinstance(mode, str) and mode.lower() in ("true", "false"):  # from --config.distributed=
        mode = mode.lower() == "true"
    if mode not in (True, False, "auto"):
        raise ConfigError(f"config.distributed must be True, False or 'auto', got {mode!r}")
    return mode


def _explicit_env() -> dict[str, Any] | None:
    """Coordinator, process count and id from the JAX_* variables, or None when they are unset."""
    if _ENV_COORDINATOR not in os.environ:
        return None
    missing = [v for v in (_ENV_NUM_PROCESSES, _ENV_PROCESS_ID) if v not in os.environ]
    if missing:
        raise ValueError(
            f"{_ENV_COORDINATOR} is set but {', '.join(missing)} is not; set all three of "
            f"{_ENV_COORDINATOR}, {_ENV_NUM_PROCESSES}, {_ENV_PROCESS_ID}")
    try:
        num_processes = int(os.environ[_ENV_NUM_PROCESSES])
        process_id = int(os.environ[_ENV_PROCESS_ID])
    except ValueError as e:
        raise ValueError(f"{_ENV_NUM_PROCESSES} and {_ENV_PROCESS_ID} must be integers") from e
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"need {_ENV_NUM_PROCESSES} >= 1 and 0 <= {_ENV_PROCESS_ID} < {_ENV_NUM_PROCESSES}, "
            f"got {num_processes} and {process_id}")
    return dict(coordinator_address=os.environ[_ENV_COORDINATOR],
                num_processes=num_processes, process_id=process_id)


def _env_says_multiprocess() -> bool:
    """True under a multi-task SLURM step or a multi-host TPU slice (GKE / multislice env)."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return True
    return "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def maybe_initialize_distributed(cfg=None) -> bool:
    """Initialises ``jax.distributed`` when this is a multi-process job; call before any device use.

    ``cfg.distributed`` (default 'auto') chooses:
      * False: never initialise (single-process job).
      * 'auto': initialise when the environment says several processes: the JAX_COORDINATOR_ADDRESS,
        JAX_NUM_PROCESSES, JAX_PROCESS_ID variables with more than one process; a SLURM step with
        SLURM_NTASKS > 1; a TPU slice listing several TPU_WORKER_HOSTNAMES, or a multislice
        MEGASCALE_COORDINATOR_ADDRESS.
      * True: always initialise; with the JAX_* variables set they are used, otherwise jax's own
        cluster auto-detection runs (this is how GCE TPU pods, whose worker list lives in the
        metadata server, are found).

    Idempotent: a second call (or a call after someone else initialised) does nothing.
    Initialisation and heartbeats wait up to ``$JAXDIFF_DISTRIBUTED_TIMEOUT_S`` seconds (600).

    Args:
      cfg: a ConfigDict (or any mapping with ``.get``) holding ``distributed``, or None.
    Returns:
      True when the distributed system is initialised on return.
    """
    mode = _distributed_mode(cfg)
    if jax.distributed.is_initialized():
        return True
    if mode is False:
        return False
    explicit = _explicit_env()
    if explicit is not None and explicit["num_processes"] == 1 and mode == "auto":
        return False
    if explicit is None and not (mode is True or _env_says_multiprocess()):
        return False
    timeout = _timeout_seconds()
    jax.distributed.initialize(**(explicit or {}), initialization_timeout=timeout,
                               heartbeat_timeout_seconds=timeout)
    _open_collectives()
    return True


def _timeout_seconds() -> int:
    """Coordination timeout: ``$JAXDIFF_DISTRIBUTED_TIMEOUT_S`` (default 600 s), generous so a
    process that starts late on a loaded machine still joins."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
    return seconds


def _open_collectives() -> None:
    """One cross-process barrier right after ``initialize``, while every process is at the same
    point: the CPU collectives (Gloo) set up their context here, within their own fixed
    time-out, instead of at the first training step, where one process may still be compiling
    long after the others arrived."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("jaxdiff: processes joined")


def _mesh_field(mesh_cfg, name: str, default: int) -> int:
    value = mesh_cfg.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"config.mesh.{name} must be an int, got {value!r}")
    return int(value)


def make_mesh(mesh_cfg) -> Mesh:
    """Builds the job's ``('data', 'fsdp')`` mesh over all global devices.

    Args:
      mesh_cfg: ConfigDict (``config.mesh``) with ``data`` (int >= 1, or -1 = all devices not used
        by fsdp; default -1) and ``fsdp`` (int >= 1, default 1).
    Returns:
      a ``Mesh`` of shape (data, fsdp) with ``AxisType.Auto`` axes.
    Raises:
      ValueError: naming ``config.mesh.data`` / ``config.mesh.fsdp`` when they are not positive,
        do not divide the device count, or their product is not ``jax.device_count()``.
    """
    n = jax.device_count()
    fsdp = _mesh_field(mesh_cfg, "fsdp", 1)
    data = _mesh_field(mesh_cfg, "data", -1)
    if fsdp < 1:
        raise ConfigError(f"config.mesh.fsdp must be >= 1, got {fsdp}")
    if data == -1:
        if n % fsdp:
            raise ConfigError(f"config.mesh.fsdp={fsdp} does not divide the {n} devices")
        data = n // fsdp
    elif data < 1:
        raise ConfigError(f"config.mesh.data must be >= 1 or -1 (all remaining), got {data}")
    if data * fsdp != n:
        raise ConfigError(
            f"config.mesh.data * config.mesh.fsdp = {data} * {fsdp} = {data * fsdp} must equal "
            f"the number of devices, {n}")
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (batch) axis over ``('data', 'fsdp')``; other axes are replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Shards the largest dim divisible by ``fsdp`` (the last one on ties), else replicates."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % fsdp == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], i))
    return P(*([None] * axis + ["fsdp"]))


def param_shardings(mesh: Mesh, params, rule: str, min_size: int = DEFAULT_FSDP_MIN_SIZE):
    """Shardings for a parameter pytree.

    Args:
      mesh: the job mesh (must have an 'fsdp' axis).
      params: pytree whose leaves have ``.shape`` (arrays, ``jax.ShapeDtypeStruct``); leaves
        without a shape (Python scalars) are replicated.
      rule: ``config.mesh.param_rule``: 'replicate' (every leaf replicated) or 'fsdp' (leaves
        with >= ``min_size`` elements are split over 'fsdp' along their largest dimension
        divisible by the fsdp size; the last such dimension on ties).
      min_size: element count below which a leaf is always replicated.
    Returns:
      a pytree of ``NamedSharding`` with the structure of ``params``.
    """
    if rule not in PARAM_RULES:
        raise ConfigError(f"config.mesh.param_rule must be one of {PARAM_RULES}, got {rule!r}")
    fsdp = mesh.shape["fsdp"] if rule == "fsdp" else 1

    def one(leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, _fsdp_spec(shape, fsdp, min_size))

    return jax.tree.map(one, params)


def shard_params(params, shardings):
    """Places ``params`` onto ``shardings`` (same pytree structure); returns the placed pytree."""
    return jax.device_put(params, shardings)


def global_batch(local_tree, mesh: Mesh):
    """Assembles each process's host-local batch into global arrays sharded on the batch axis.

    Args:
      local_tree: pytree of host-local arrays, each of shape (local_batch, ...); local_batch must
        be divisible by the number of this process's devices, and equal on every process.
      mesh: the job mesh.
    Returns:
      pytree of global ``jax.Array`` of shape (local_batch * process_count, ...) with
      ``batch_sharding(mesh)``; process p's rows come p-th in the global batch.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> int:
    """Validates ``config.batch_size`` against the mesh; returns the per-process batch size.

    Raises:
      ValueError: naming ``config.batch_size`` when it is not a positive multiple of the number of
        batch shards (data * fsdp = all devices of the mesh).
    """
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch_size < 1 or global_batch_size % shards:
        raise ConfigError(
            f"config.batch_size={global_batch_size} must be a positive multiple of the "
            f"{shards} batch shards (config.mesh.data * config.mesh.fsdp)")
    return global_batch_size // jax.process_count()
