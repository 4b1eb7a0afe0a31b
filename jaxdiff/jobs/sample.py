"""The sampling job: resumable, device-invariant batched sampling from a trained checkpoint.

``--mode=sample`` draws ``config.sample.num_samples`` samples with the configured sampler, its
options, NFE and grid, guided by ``config.guidance`` (any registered transform), from the chosen
EMA (or raw) parameters, and writes them as numbered shards (``jaxdiff.jobs.samples_io``) under
``WORKDIR/samples/<tag>/``, plus ``grid.png`` for image data.  With ``config.search`` naming a
search (``jaxdiff.search.config``), every shard is drawn by that search, scored by its verifier,
and the protocol records the search section.  It restores the checkpoint's
``model`` item only: no optimizer state is read or allocated.

Sample i uses the PRNG stream fold_in(key(seed), i) and label ``i % num_classes`` (class-
balanced) or a fixed class, so the set of samples is a function of the protocol alone: identical
for any device count, host count or shard size that divides the work the same way.  A restarted
job finds the shards already written (each written atomically), verifies them, and completes
only the missing ones; it never overwrites a shard, and it refuses a directory whose manifest
records a different protocol.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import config as C
from jaxdiff import images as I
from jaxdiff import parallel, samplers
from jaxdiff.data import get_source
from jaxdiff.errors import ConfigError, NonFiniteError
from jaxdiff.combine.tstitch import check_workdirs
from jaxdiff.jobs import samples_io as IO
from jaxdiff.jobs.spec import needs_checkpoint, register_job, restore_model, spec_for_data
from jaxdiff.search.config import run_search
from jaxdiff.search.verifiers import feature_network_verifier


def _preflight(config, workdir: str, earlier) -> None:
    """The labels against the data (a config error first), then the checkpoint."""
    num_classes = get_source(config.data, "heldout").num_classes
    IO.labels_for(np.zeros(1, np.int64), str(config.sample.labels), num_classes)
    needs_checkpoint(config, workdir, earlier, int(config.sample.checkpoint_step))
    check_workdirs(config)
    if config.search.name != "none" and jax.process_count() > 1:
        raise ConfigError(f"config.search.name: search {config.search.name!r} runs on one "
                          f"process (its trees and candidates live on the host); this job has "
                          f"{jax.process_count()}")


@register_job("sample", preflight=_preflight)
def sample_job(config, workdir: str) -> dict:
    """Runs (or completes) the sampling job; returns the manifest plus the output directory."""
    C.validate(config)
    parallel.maybe_initialize_distributed(config)
    mesh = parallel.make_mesh(config.mesh)
    s = config.sample
    n, size = int(s.num_samples), int(s.shard_size)
    if size % mesh.size:
        raise ConfigError(f"config.sample.shard_size: {size} is not divisible by the "
                          f"{mesh.size} devices")
    _preflight(config, workdir, ())
    spec, _ = spec_for_data(config, "heldout")
    C.validate(config, num_classes=spec.num_classes, example_shape=spec.example_shape)
    shardings = parallel.param_shardings(mesh, spec.abstract_params, config.mesh.param_rule)
    params, step = restore_model(spec, workdir,
                                 None if int(s.checkpoint_step) < 0 else int(s.checkpoint_step),
                                 shardings=shardings)
    proto = IO.protocol(config, spec.num_classes, spec.example_shape, step, spec.kind)
    kind = spec.kind
    out_dir = os.path.join(workdir, "samples", s.out_name or IO.protocol_tag(proto))
    is_main = jax.process_index() == 0
    if is_main:
        print(f"sampling from checkpoint step {step} of {workdir}", flush=True)
        os.makedirs(out_dir, exist_ok=True)
        IO.check_manifest(out_dir, proto)

    num_shards = -(-n // size)
    den = spec.guided(params)
    sharding = parallel.batch_sharding(mesh)
    key = jax.random.key(int(s.seed))
    todo = []
    for k in range(num_shards):
        idx = np.arange(k * size, min((k + 1) * size, n))
        path = os.path.join(out_dir, IO.SHARD_FORMAT.format(k))
        if os.path.exists(path):
            try:
                IO.read_shard(path, idx, spec.example_shape, kind)  # verify; never overwrite
                continue
            except IO.ShardError as e:  # a shard cut off by a full disk or a damaged file
                if is_main:
                    moved = IO.move_aside(path)
                    print(f"jaxdiff: warning: {e}; moved to {moved}, drawing it again",
                          file=sys.stderr, flush=True)
        todo.append((k, idx, path))
    search = config.search.name != "none"
    verifier = feature_network_verifier(config, den) if search and todo else None
    nfe_sum = 0.0
    bar = None
    if is_main and todo:
        from tqdm import tqdm
        bar = tqdm(total=num_shards, initial=num_shards - len(todo), desc="sample", unit="shard",
                   dynamic_ncols=True)
    for k, idx, path in todo:
        full = np.arange(k * size, (k + 1) * size)          # pad the last shard to full size
        labels = IO.labels_for(full, str(s.labels), spec.num_classes)
        g_idx, g_lab = (jax.device_put(jnp.asarray(a), sharding) for a in (full, labels))
        shape, cond = (size,) + spec.example_shape, spec.condition(g_lab)
        if search:
            out = run_search(config, den, key, shape, verifier, cond, g_idx)
            nfe_sum += float(out.nfe) * len(idx)
        else:
            out = samplers.sample(den, key, shape, sampler=s.sampler, steps=int(s.steps),
                                  grid=s.grid, cond=cond, indices=g_idx, **dict(s.options))
        x = _to_host(out.x0)[: len(idx)]
        if not np.all(np.isfinite(x)):
            raise NonFiniteError(
                f"sampling produced non-finite values in shard {k} (checkpoint step {step}, "
                f"{s.sampler} {s.steps} steps): the model or the sampler options are broken; "
                f"nothing of this shard was written")
        if is_main:
            IO.write_shard(path, IO.to_storage(x, kind), labels[: len(idx)],
                           idx.astype(np.int64))
            bar.update(1)
    if bar is not None:
        bar.close()
    if is_main:
        if kind == "image":
            first = IO.read_shard(os.path.join(out_dir, IO.SHARD_FORMAT.format(0)))
            m = min(len(first["samples"]), 100)
            I.save_grid(os.path.join(out_dir, "grid.png"),
                        IO.from_storage(first["samples"][:m], kind),
                        rows=max(1, int(np.sqrt(m))),
                        upscale=max(1, 64 // spec.example_shape[0]))
        print(f"{n} samples in {num_shards} shards under {out_dir}", flush=True)
    done = sum(len(idx) for _, idx, _ in todo)
    if search and done:
        per_call = proto["network_evaluations_per_sample"] // max(proto["nfe"], 1)
        print(f"search {config.search.name}: {nfe_sum / done:.1f} denoiser calls per sample "
              f"over the {done} drawn now ({per_call} network evaluation(s) per call)",
              flush=True)
    return dict(proto, out_dir=out_dir, num_shards=num_shards,
                search_nfe_per_sample=nfe_sum / done if search and done else None)


def _to_host(x) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
