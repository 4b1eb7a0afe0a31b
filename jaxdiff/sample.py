"""The sampling job: resumable, device-invariant batched sampling from a trained checkpoint.

``--mode=sample`` draws ``config.sample.num_samples`` images with the configured sampler, NFE,
CFG scale and guidance interval from the chosen EMA (or raw) parameters and writes them as
numbered shards under ``WORKDIR/samples/<tag>/``:

  shard_00000.npz   images uint8 (S, H, W, C), labels int32 (S,), indices int64 (S,)
  manifest.json     the protocol (checkpoint step, sampler, steps, NFE, grid, CFG, seed, ...)
  grid.png          the first samples as a picture

Sample i uses the PRNG stream fold_in(key(seed), i) and label ``i % num_classes`` (class-
balanced) or a fixed class, so the set of samples is a function of the protocol alone: identical
for any device count, host count or shard size that divides the work the same way.  A restarted
job finds the shards already written (each written atomically: a temporary file renamed into
place), verifies them, and completes only the missing ones; it never overwrites a shard, and it
refuses a directory whose manifest records a different protocol.
"""
from __future__ import annotations

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import config as C
from jaxdiff import images as I
from jaxdiff import parallel, samplers
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.data import get_source
from jaxdiff.guidance import CFG
from jaxdiff.train import build_setup, preview_params

SHARD_FORMAT = "shard_{:05d}.npz"


class ShardError(ValueError):
    """A shard on disk is unreadable or does not match the job's protocol."""


def protocol(config, num_classes: int, data_shape, step: int) -> dict:
    """The JSON-able description that fixes the set of samples."""
    s = config.sample
    nfe = samplers.nfe_of(s.sampler, int(s.steps))
    guided = num_classes > 0 and float(s.cfg_scale) != 1.0
    return dict(checkpoint_step=int(step), sampler=s.sampler, steps=int(s.steps), nfe=nfe,
                network_evaluations_per_sample=nfe * (2 if guided else 1),
                grid=s.grid, cfg_scale=float(s.cfg_scale), guidance_interval=[float(s.t_lo),
                                                                              float(s.t_hi)],
                ema_index=int(s.ema_index), seed=int(s.seed), labels=str(s.labels),
                num_samples=int(s.num_samples), shard_size=int(s.shard_size),
                image_shape=list(data_shape), num_classes=int(num_classes),
                dataset=config.data.name if config.data.name != "tfds" else config.data.tfds_name)


def protocol_tag(proto: dict) -> str:
    return (f"step{proto['checkpoint_step']}-{proto['sampler']}{proto['steps']}-{proto['grid']}"
            f"-cfg{proto['cfg_scale']:g}-ema{proto['ema_index']}-seed{proto['seed']}"
            f"-{proto['labels']}")


def labels_for(indices: np.ndarray, labels: str, num_classes: int) -> np.ndarray:
    """Class of each global sample index: 'balanced' -> i % C; a digit string -> that class."""
    if num_classes == 0:
        return np.zeros(indices.shape, np.int32)
    if labels == "balanced":
        return (indices % num_classes).astype(np.int32)
    if labels.isdigit() and int(labels) < num_classes:
        return np.full(indices.shape, int(labels), np.int32)
    raise ValueError(f"config.sample.labels: expected 'balanced' or a class index in "
                     f"[0, {num_classes}), got {labels!r}")


def read_shard(path: str, expect_indices: np.ndarray | None = None,
               image_shape: tuple | None = None) -> dict:
    """Loads and verifies one shard; raises ShardError naming the file and the problem."""
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in ("images", "labels", "indices")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise ShardError(f"{path}: corrupted or incomplete shard ({e}); delete it to resample "
                         f"it") from None
    images, labels, indices = data["images"], data["labels"], data["indices"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ShardError(f"{path}: images must be uint8 (N, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise ShardError(f"{path}: image shape {images.shape[1:]} != expected "
                         f"{tuple(image_shape)}")
    if labels.shape != (images.shape[0],) or indices.shape != (images.shape[0],):
        raise ShardError(f"{path}: labels / indices do not match {images.shape[0]} images")
    if expect_indices is not None and not np.array_equal(indices, expect_indices):
        raise ShardError(f"{path}: holds sample indices {indices[:3]}... but this protocol "
                         f"expects {expect_indices[:3]}...")
    return data


def _write_atomic_npz(path: str, **arrays) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _check_manifest(out_dir: str, proto: dict) -> None:
    path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != proto:
            diff = sorted(k for k in set(old) | set(proto) if old.get(k) != proto.get(k))
            raise ValueError(f"config.sample: {out_dir} holds samples of another protocol "
                             f"(differs in {diff}); choose another config.sample.out_name")
    else:
        with open(path + ".tmp", "w") as f:
            json.dump(proto, f, indent=2)
        os.replace(path + ".tmp", path)


def checkpoint_dir(workdir: str) -> str:
    """``workdir/checkpoints``; raises FileNotFoundError (naming the fix) when it is missing.
    Jobs call it before building their network, so a wrong --workdir fails at once."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"no checkpoint directory {ckpt_dir}: train first "
                                f"(--mode=train with the same --workdir)")
    return ckpt_dir


def restore_params(config, workdir: str, setup, state, step: int | None = None):
    """Restores the train state of ``workdir`` (latest or ``step``); returns (params, step)."""
    ckpt = Checkpointer(checkpoint_dir(workdir), async_save=False)
    try:
        restored, _ = ckpt.restore(step=step, target=state)
    finally:
        ckpt.close()
    ema = int(config.sample.ema_index)
    return preview_params(restored, ema), int(restored["step"])


def sample_job(config, workdir: str) -> dict:
    """Runs (or completes) the sampling job; returns the manifest plus the output directory."""
    C.validate(config)
    parallel.maybe_initialize_distributed(config)
    mesh = parallel.make_mesh(config.mesh)
    s = config.sample
    source = get_source(config.data, "heldout")
    checkpoint_dir(workdir)
    setup, state = build_setup(config, source.num_classes, source.image_shape)
    params, step = restore_params(config, workdir, setup, state,
                                  None if int(s.checkpoint_step) < 0 else int(s.checkpoint_step))
    proto = protocol(config, setup.num_classes, setup.data_shape, step)
    out_dir = os.path.join(workdir, "samples", s.out_name or protocol_tag(proto))
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
        _check_manifest(out_dir, proto)

    n, size = int(s.num_samples), int(s.shard_size)
    if size % mesh.size:
        raise ValueError(f"config.sample.shard_size: {size} is not divisible by the "
                         f"{mesh.size} devices")
    num_shards = -(-n // size)
    params = jax.device_put(params, parallel.param_shardings(mesh, params,
                                                             config.mesh.param_rule))
    den = setup.denoiser(params)
    if setup.num_classes > 0:
        den = CFG(den, scale=float(s.cfg_scale), null=setup.num_classes, t_lo=float(s.t_lo),
                  t_hi=float(s.t_hi))
    sharding = parallel.batch_sharding(mesh)
    key = jax.random.key(int(s.seed))
    todo = []
    for k in range(num_shards):
        idx = np.arange(k * size, min((k + 1) * size, n))
        path = os.path.join(out_dir, SHARD_FORMAT.format(k))
        if os.path.exists(path):
            read_shard(path, idx, setup.data_shape)  # verify; never overwrite
        else:
            todo.append((k, idx, path))
    bar = None
    if is_main and todo:
        from tqdm import tqdm
        bar = tqdm(total=num_shards, initial=num_shards - len(todo), desc="sample", unit="shard",
                   dynamic_ncols=True)
    for k, idx, path in todo:
        full = np.arange(k * size, (k + 1) * size)          # pad the last shard to full size
        labels = labels_for(full, str(s.labels), setup.num_classes)
        g_idx, g_lab = (jax.device_put(jnp.asarray(a), sharding) for a in (full, labels))
        out = samplers.sample(den, key, (size,) + setup.data_shape, sampler=s.sampler,
                              steps=int(s.steps), grid=s.grid,
                              cond=g_lab if setup.num_classes > 0 else None, indices=g_idx)
        imgs = _to_host(out.x0)[: len(idx)]
        if is_main:
            _write_atomic_npz(path, images=I.to_uint8(imgs), labels=labels[: len(idx)],
                              indices=idx.astype(np.int64))
            bar.update(1)
    if bar is not None:
        bar.close()
    if is_main:
        first = read_shard(os.path.join(out_dir, SHARD_FORMAT.format(0)))
        m = min(len(first["images"]), 100)
        grid = first["images"][:m].astype(np.float32) / 127.5 - 1.0
        I.save_grid(os.path.join(out_dir, "grid.png"), grid, rows=max(1, int(np.sqrt(m))),
                    upscale=max(1, 64 // setup.data_shape[0]))
        print(f"{n} samples in {num_shards} shards under {out_dir}", flush=True)
    return dict(proto, out_dir=out_dir, num_shards=num_shards)


def _to_host(x) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def load_samples(out_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """All shards of a sampling directory, verified: (images uint8, labels int32, manifest)."""
    with open(os.path.join(out_dir, "manifest.json")) as f:
        proto = json.load(f)
    size, n = proto["shard_size"], proto["num_samples"]
    imgs, labs = [], []
    for k in range(-(-n // size)):
        path = os.path.join(out_dir, SHARD_FORMAT.format(k))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: run --mode=sample again to complete "
                                    f"the job")
        d = read_shard(path, np.arange(k * size, min((k + 1) * size, n)),
                       tuple(proto["image_shape"]))
        imgs.append(d["images"])
        labs.append(d["labels"])
    return np.concatenate(imgs), np.concatenate(labs), proto
