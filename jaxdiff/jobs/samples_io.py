"""Where samples live and how they are stored: the shard format, the protocol, loading.

A sampling job writes ``WORKDIR/samples/<tag>/``:

  shard_00000.npz   samples (S, *example_shape), labels int32 (S,), indices int64 (S,)
  manifest.json     the protocol (checkpoint step, sampler, steps, NFE, grid, guidance, seed, ...)

Samples keep their kind's storage dtype: images (H, W, C) as uint8 (``clip(round(x * 127.5 +
127.5))``), signals and vectors as float32, tokens as int32.  ``protocol`` is the JSON-able
description that fixes the set of samples; the directory name is ``protocol_tag(protocol)``
unless ``config.sample.out_name`` names it.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from jaxdiff import images as I
from jaxdiff.data import dataset_name
from jaxdiff.errors import (ConfigError, CorruptDataError, MissingInputError,
                            RunEnvironmentError)
from jaxdiff.jsonio import write_json

SHARD_FORMAT = "shard_{:05d}.npz"
STORAGE_DTYPES = {"image": np.uint8, "signal": np.float32, "vector": np.float32,
                  "array": np.float32, "tokens": np.int32}


class ShardError(CorruptDataError):
    """A shard on disk is unreadable or does not match the job's protocol."""


def to_storage(x, kind: str) -> np.ndarray:
    """Float samples in the data's range -> the stored array of their kind."""
    if kind == "image":
        return I.to_uint8(x)
    return np.asarray(x, STORAGE_DTYPES[kind])


def from_storage(stored: np.ndarray, kind: str) -> np.ndarray:
    """The stored array -> float32 samples in the data's range (images to [-1, 1])."""
    if kind == "image":
        return stored.astype(np.float32) / 127.5 - 1.0
    return np.asarray(stored, np.float32)


def protocol(config, num_classes: int, example_shape, step: int, kind: str) -> dict:
    """The JSON-able description that fixes the set of samples."""
    from jaxdiff.guidance import evals_per_call
    from jaxdiff.samplers import nfe_of

    s, g = config.sample, config.guidance
    nfe = nfe_of(s.sampler, int(s.steps))
    guided = num_classes > 0 and g.name != "none"
    return dict(checkpoint_step=int(step), sampler=s.sampler, steps=int(s.steps), nfe=nfe,
                sampler_options={k: float(v) for k, v in dict(s.options).items()},
                network_evaluations_per_sample=nfe * (evals_per_call(g) if guided else 1),
                grid=s.grid, guidance=dict(g.to_dict()) if guided else dict(name="none"),
                ema_index=int(s.ema_index), seed=int(s.seed), labels=str(s.labels),
                num_samples=int(s.num_samples), shard_size=int(s.shard_size),
                example_shape=list(example_shape), kind=kind,
                num_classes=int(num_classes), dataset=dataset_name(config.data),
                **denoiser_protocol(config))


def denoiser_protocol(config) -> dict:
    """The protocol entries of the sampling Denoiser's options, present only when they change
    it (so the protocols of plain runs keep their form): ``exit_threshold`` (DeeDiff early
    exit), ``search`` (the ``config.search`` section that draws each sample) and ``stitch``
    (T-Stitch: the first models' workdirs, their cumulative step fractions and the denoiser
    evaluations (NFE) per sample of each model, the run's model last)."""
    from jaxdiff.combine.tstitch import evaluations_per_model
    from jaxdiff.jobs.spec import build_schedule

    out = {}
    threshold = float(config.sample.get("exit_threshold", 0.0))
    if threshold > 0:
        out["exit_threshold"] = threshold
    search = config.get("search")
    if search is not None and search.name != "none":
        out["search"] = search.to_dict()
    stitch = config.get("stitch")
    if stitch is not None and stitch.workdirs:
        fractions = [float(f) for f in stitch.fractions]
        out["stitch"] = dict(workdirs=list(stitch.workdirs), fractions=fractions,
                             nfe_per_model=evaluations_per_model(
                                 build_schedule(config.diffusion), config.sample, fractions))
    return out


def guidance_tag(guidance: dict) -> str:
    """Short name of a guidance section: 'none'; 'cfg2', plus each other field that differs
    from CFG's defaults ('cfg2-t_hi0.9' for a guidance interval); or name + its numbers."""
    if guidance["name"] == "cfg":
        from jaxdiff.guidance import guidance_config

        defaults = guidance_config("cfg").to_dict()
        return f"cfg{guidance['scale']:g}" + "".join(
            f"-{k}{v:g}" if isinstance(v, (int, float)) else f"-{k}{v}"
            for k, v in sorted(guidance.items())
            if k not in ("name", "scale") and v != defaults.get(k))
    nums = [f"{v:g}" for k, v in sorted(guidance.items())
            if k != "name" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return guidance["name"] + ("-" + "-".join(nums) if nums else "")


def protocol_tag(proto: dict) -> str:
    opts = "".join(f"-{k}{v:g}" for k, v in sorted(proto["sampler_options"].items()))
    return (f"step{proto['checkpoint_step']}-{proto['sampler']}{proto['steps']}{opts}"
            f"-{proto['grid']}-{guidance_tag(proto['guidance'])}-ema{proto['ema_index']}"
            f"-seed{proto['seed']}-{proto['labels']}"
            + (f"-exit{proto['exit_threshold']:g}" if "exit_threshold" in proto else "")
            + _stitch_tag(proto.get("stitch")) + _search_tag(proto.get("search")))


def _search_tag(search: dict | None) -> str:
    """'-<search name>' plus its positive integer fields and every other field that differs
    from the search's defaults (e.g. '-dts-rollouts8', '-smc-lam2-particles4',
    '-random-candidates4-feature_similarity'), or '' without search, so two sections that draw
    different samples get different directories; the full section is in the protocol."""
    if not search:
        return ""
    from jaxdiff.search.config import search_config

    defaults = search_config(search["name"]).to_dict()
    parts = []
    for k, v in sorted(search.items()):
        if k == "name":
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            if v > 0 or v != defaults.get(k):
                parts.append(f"-{k}{v}")
        elif v != defaults.get(k):
            parts.append(f"-{v}" if isinstance(v, str) else
                         f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}")
    return f"-{search['name']}" + "".join(parts)


def _stitch_tag(stitch: dict | None) -> str:
    """'-stitch-<first model's workdir name><its step fraction>...', or '' without stitching."""
    if not stitch:
        return ""
    return "".join(f"-stitch-{os.path.basename(os.path.normpath(w))}{f:g}"
                   for w, f in zip(stitch["workdirs"], stitch["fractions"]))


def labels_for(indices: np.ndarray, labels: str, num_classes: int) -> np.ndarray:
    """Class of each global sample index: 'balanced' -> i % C; a digit string -> that class."""
    if num_classes == 0:
        return np.zeros(indices.shape, np.int32)
    if labels == "balanced":
        return (indices % num_classes).astype(np.int32)
    if labels.isdigit() and int(labels) < num_classes:
        return np.full(indices.shape, int(labels), np.int32)
    raise ConfigError(f"config.sample.labels: expected 'balanced' or a class index in "
                      f"[0, {num_classes}), got {labels!r}")


def read_shard(path: str, expect_indices: np.ndarray | None = None,
               example_shape: tuple | None = None, kind: str | None = None) -> dict:
    """Loads and verifies one shard; raises ShardError naming the file and the problem."""
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in ("samples", "labels", "indices")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise ShardError(f"{path}: corrupted or incomplete shard ({e}); run --mode=sample "
                         f"again to move it aside and draw it again") from None
    samples, labels, indices = data["samples"], data["labels"], data["indices"]
    if kind is not None and samples.dtype != STORAGE_DTYPES[kind]:
        raise ShardError(f"{path}: {kind} samples must be stored as "
                         f"{np.dtype(STORAGE_DTYPES[kind]).name}, got {samples.dtype}")
    if samples.ndim < 2:
        raise ShardError(f"{path}: samples must be (N, ...), got shape {samples.shape}")
    if example_shape is not None and tuple(samples.shape[1:]) != tuple(example_shape):
        raise ShardError(f"{path}: example shape {samples.shape[1:]} != expected "
                         f"{tuple(example_shape)}")
    if labels.shape != (samples.shape[0],) or indices.shape != (samples.shape[0],):
        raise ShardError(f"{path}: labels / indices do not match {samples.shape[0]} samples")
    if expect_indices is not None and not np.array_equal(indices, expect_indices):
        raise ShardError(f"{path}: holds sample indices {indices[:3]}... but this protocol "
                         f"expects {expect_indices[:3]}...")
    return data


def write_shard(path: str, samples: np.ndarray, labels: np.ndarray,
                indices: np.ndarray) -> None:
    """Writes one shard atomically (a temporary file renamed into place); a failed write
    (a full disk) removes the temporary file and raises RunEnvironmentError."""
    tmp = path + ".tmp.npz"
    try:
        np.savez(tmp, samples=samples, labels=labels, indices=indices)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RunEnvironmentError(f"could not write the sample shard {path}: "
                                  f"{e.strerror or e}; the shards written before it are kept: "
                                  f"fix the cause (e.g. free disk space) and rerun --mode=sample "
                                  f"to complete the job") from None


def move_aside(path: str) -> str:
    """Renames a damaged file to ``<path>.corrupt[.n]`` (kept for inspection); returns it."""
    dest, n = path + ".corrupt", 1
    while os.path.exists(dest):
        dest, n = f"{path}.corrupt.{n}", n + 1
    os.replace(path, dest)
    return dest


def check_manifest(out_dir: str, proto: dict) -> None:
    """Writes the manifest, or refuses a directory whose manifest records another protocol."""
    path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != proto:
            diff = sorted(k for k in set(old) | set(proto) if old.get(k) != proto.get(k))
            raise ConfigError(f"config.sample: {out_dir} holds samples of another protocol "
                              f"(differs in {diff}); choose another config.sample.out_name")
    else:
        write_json(path, proto)


def samples_dir(config, workdir: str, num_classes: int, example_shape, kind: str) -> str:
    """The directory the sampling job with this config writes to (for the latest checkpoint
    when ``config.sample.checkpoint_step`` is -1)."""
    s = config.sample
    if s.out_name:
        return os.path.join(workdir, "samples", s.out_name)
    step = int(s.checkpoint_step)
    if step < 0:
        from jaxdiff.jobs.spec import checkpoint_dir, open_checkpoints

        ckpt_dir = checkpoint_dir(workdir)
        ckpt = open_checkpoints(workdir, async_save=False)
        step = ckpt.latest_step()
        ckpt.close()
        if step is None:
            raise MissingInputError(f"no checkpoint in {ckpt_dir}: train first")
    proto = protocol(config, num_classes, example_shape, step, kind)
    return os.path.join(workdir, "samples", protocol_tag(proto))


def load_samples(out_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """All shards of a sampling directory, verified: (stored samples, labels int32, manifest)."""
    with open(os.path.join(out_dir, "manifest.json")) as f:
        proto = json.load(f)
    size, n = proto["shard_size"], proto["num_samples"]
    samples, labs = [], []
    for k in range(-(-n // size)):
        path = os.path.join(out_dir, SHARD_FORMAT.format(k))
        if not os.path.exists(path):
            raise MissingInputError(f"{path} is missing: run --mode=sample again to complete "
                                    f"the job")
        d = read_shard(path, np.arange(k * size, min((k + 1) * size, n)),
                       tuple(proto["example_shape"]), proto["kind"])
        samples.append(d["samples"])
        labs.append(d["labels"])
    return np.concatenate(samples), np.concatenate(labs), proto
