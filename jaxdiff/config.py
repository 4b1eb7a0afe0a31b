"""Experiment configs: defaults for the non-network sections, builders and validation.

An experiment config (``configs/*.py``, ``get_config()``) is one ``ml_collections.ConfigDict``:

  seed              int; every random stream derives from it
  data              see ``jaxdiff.data.default_data_config``
  model             see ``jaxdiff.models.default_unet_config`` / ``default_dit_config``
  diffusion         schedule (+ its parameters), parameterization, loss weighting, time sampler,
                    CFG condition dropout
  optim             AdamW, learning-rate schedule, gradient clipping
  train             steps, batch size, EMA decays, logging / sampling / checkpoint cadence
  sample            sampler used for the preview grids and the sampling job
  eval              own feature network (trained per dataset), Inception weights
  classify          Diffusion Classifier protocol for --mode=classify
  mesh              data / fsdp axes, parameter sharding rule
  distributed       'auto' | True | False (``jaxdiff.parallel.maybe_initialize_distributed``)

``validate(config)`` runs before anything is compiled and raises a ``ValueError`` whose message
starts with the offending field, e.g. ``config.optim.lr: must be > 0, got -0.1``.
"""
from __future__ import annotations

import math
import numbers

import ml_collections

from jaxdiff import parameterization as P
from jaxdiff import schedules
from jaxdiff.data import validate_data_config
from jaxdiff.losses import TIME_SAMPLERS
from jaxdiff.models import check_model_config
from jaxdiff.schedules import GRID_KINDS

LR_SCHEDULES = ("constant", "cosine")


def default_diffusion_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        schedule="vp_cosine",              # a key of jaxdiff.schedules.SCHEDULES
        schedule_kwargs=ml_collections.ConfigDict(),  # e.g. sigma_max for 'edm'
        parameterization="eps",            # 'eps' | 'x0' | 'v' | 'edm'
        sigma_data=0.5,
        weighting="native",                # see jaxdiff.parameterization.WEIGHTINGS
        min_snr_gamma=5.0,
        time_sampler="uniform",            # 'uniform' | 'discrete' | 'lognormal'
        p_mean=-1.2,
        p_std=1.2,
        p_uncond=0.1,                      # CFG condition dropout
    ))


def default_optim_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        lr=2e-4, lr_schedule="cosine", warmup_steps=100, final_lr_fraction=0.1,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))


def default_train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=64, ema_decays=(0.999,), ema_warmup=True,
        log_every=50, sample_every=0, checkpoint_every=500, keep_checkpoints=3,
        time_limit_minutes=0.0,            # > 0: stop (with a checkpoint) after this wall time
        progress_bar=True))


def default_sample_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        sampler="heun", steps=18, grid="karras", cfg_scale=2.0, ema_index=0,
        grid_per_class=8, seed=0,
        # the sampling job (--mode=sample)
        num_samples=1000, shard_size=250, labels="balanced", checkpoint_step=-1,
        t_lo=0.0, t_hi=1.0, out_name=""))


def default_eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        feature_network_dir="",            # '' -> $JAXDIFF_CACHE/feature_networks/<dataset>
        train_classifier_if_missing=True,
        classifier_steps=1500, classifier_batch_size=128, classifier_seed=0,
        inception_weights=""))             # pytorch-fid weights file ('' -> $JAXDIFF_INCEPTION_WEIGHTS)


def default_classify_config() -> ml_collections.ConfigDict:
    """``--mode=classify``: the Diffusion Classifier protocol (jaxdiff.classify_job)."""
    return ml_collections.ConfigDict(dict(
        num_images=1000,                   # N held-out images, evenly strided through the split
        candidates=(),                     # candidate classes; () = every class
        n_samples=(8, 48),                 # cumulative bank sizes per stage (Li et al. Sec. 3.2)
        keep=(3, 1),                       # survivors after each stage
        loss="l2", weighting="uniform", grid="stratified", time_space="t",
        batch_size=50, chunk_size=64, seed=0))


def default_mesh_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, param_rule="replicate"))


def load_config_file(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """``get_config()`` of the experiment file ``path`` (e.g. configs/digits.py) with
    ``{"train.num_steps": 6, ...}`` applied (lists become tuples).  For scripts and tests; the
    command line uses ml_collections' ``--config.a.b=v`` flags instead.

    Raises KeyError naming an override field the config does not have."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("jaxdiff_experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"unknown config field {dotted!r}")
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


def base_config(data_cfg, model_cfg) -> ml_collections.ConfigDict:
    """A complete config with every section, to be specialised by ``configs/*.py``."""
    return ml_collections.ConfigDict(dict(
        seed=0, data=data_cfg, model=model_cfg, diffusion=default_diffusion_config(),
        optim=default_optim_config(), train=default_train_config(),
        sample=default_sample_config(), eval=default_eval_config(),
        classify=default_classify_config(), mesh=default_mesh_config(), distributed="auto"))


# ------------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------------

def build_schedule(diffusion_cfg) -> schedules.Schedule:
    try:
        return schedules.get_schedule(diffusion_cfg.schedule,
                                      **dict(diffusion_cfg.schedule_kwargs))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.diffusion.schedule: {e}") from None


def build_parameterization(diffusion_cfg) -> P.Parameterization:
    try:
        return P.Parameterization(diffusion_cfg.parameterization, float(diffusion_cfg.sigma_data))
    except ValueError as e:
        raise ValueError(f"config.diffusion.parameterization: {e}") from None


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------

def _number(value, field: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, integer: bool = False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ValueError(f"config.{field}: must be {'an int' if integer else 'a number'}, "
                         f"got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"config.{field}: must be {'>' if low_open else '>='} {low}, "
                         f"got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"config.{field}: must be <= {high}, got {value!r}")


def _require_sections(config) -> None:
    for section in ("data", "model", "diffusion", "optim", "train", "sample", "eval",
                    "classify", "mesh"):
        if section not in config:
            raise ValueError(f"config.{section}: missing section")


def validate(config, num_classes: int | None = None, data_shape=None,
             device_count: int | None = None) -> None:
    """Checks every field that can be checked without data or devices (and, if given, against
    the dataset's classes / shape and the device count). Raises ValueError naming the field."""
    from jaxdiff.samplers import SAMPLERS  # registry import kept local (it imports the samplers)

    _require_sections(config)
    _number(config.seed, "seed", low=0, integer=True)
    validate_data_config(config.data)
    if data_shape is not None:
        check_model_config(config.model, data_shape, num_classes or 0)
    else:
        from jaxdiff.models import NETWORKS
        if config.model.get("name") not in NETWORKS:
            raise ValueError(f"config.model.name: unknown network {config.model.get('name')!r};"
                             f" choose one of {list(NETWORKS)}")
    d = config.diffusion
    build_schedule(d)
    build_parameterization(d)
    if d.weighting not in P.WEIGHTINGS:
        raise ValueError(f"config.diffusion.weighting: unknown {d.weighting!r}; choose one of "
                         f"{list(P.WEIGHTINGS)}")
    if d.time_sampler not in TIME_SAMPLERS:
        raise ValueError(f"config.diffusion.time_sampler: unknown {d.time_sampler!r}; choose one"
                         f" of {list(TIME_SAMPLERS)}")
    if d.time_sampler == "discrete" and d.schedule != "vp_linear":
        raise ValueError("config.diffusion.time_sampler: 'discrete' needs schedule 'vp_linear'")
    _number(d.p_uncond, "diffusion.p_uncond", low=0.0, high=1.0)
    _number(d.min_snr_gamma, "diffusion.min_snr_gamma", low=0.0, low_open=True)
    o = config.optim
    _number(o.lr, "optim.lr", low=0.0, low_open=True)
    if o.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"config.optim.lr_schedule: unknown {o.lr_schedule!r}; choose one of "
                         f"{list(LR_SCHEDULES)}")
    _number(o.warmup_steps, "optim.warmup_steps", low=0, integer=True)
    _number(o.final_lr_fraction, "optim.final_lr_fraction", low=0.0, high=1.0)
    _number(o.weight_decay, "optim.weight_decay", low=0.0)
    _number(o.grad_clip, "optim.grad_clip", low=0.0)
    for b in ("b1", "b2"):
        _number(o[b], f"optim.{b}", low=0.0, high=1.0)
    t = config.train
    _number(t.num_steps, "train.num_steps", low=1, integer=True)
    _number(t.batch_size, "train.batch_size", low=1, integer=True)
    for field in ("log_every", "sample_every", "checkpoint_every"):
        _number(t[field], f"train.{field}", low=0, integer=True)
    _number(t.keep_checkpoints, "train.keep_checkpoints", low=1, integer=True)
    _number(t.time_limit_minutes, "train.time_limit_minutes", low=0.0)
    if len(t.ema_decays) == 0:
        raise ValueError("config.train.ema_decays: give at least one EMA decay")
    for i, decay in enumerate(t.ema_decays):
        _number(decay, f"train.ema_decays[{i}]", low=0.0, high=1.0)
    if device_count is not None and t.batch_size % device_count:
        raise ValueError(f"config.train.batch_size: {t.batch_size} is not divisible by the "
                         f"{device_count} devices")
    s = config.sample
    if s.sampler not in SAMPLERS:
        raise ValueError(f"config.sample.sampler: unknown sampler {s.sampler!r}; choose one of "
                         f"{sorted(SAMPLERS)}")
    _number(s.steps, "sample.steps", low=1, integer=True)
    if s.grid not in GRID_KINDS:
        raise ValueError(f"config.sample.grid: unknown {s.grid!r}; choose one of "
                         f"{list(GRID_KINDS)}")
    _number(s.cfg_scale, "sample.cfg_scale")
    _number(s.ema_index, "sample.ema_index", low=-1, high=len(t.ema_decays) - 1, integer=True)
    _number(s.grid_per_class, "sample.grid_per_class", low=1, integer=True)
    _number(s.num_samples, "sample.num_samples", low=1, integer=True)
    _number(s.shard_size, "sample.shard_size", low=1, integer=True)
    _number(s.checkpoint_step, "sample.checkpoint_step", low=-1, integer=True)
    _number(s.t_lo, "sample.t_lo", low=0.0, high=1.0)
    _number(s.t_hi, "sample.t_hi", low=0.0, high=1.0)
    if s.t_lo >= s.t_hi:
        raise ValueError(f"config.sample.t_lo: guidance interval needs t_lo < t_hi, got "
                         f"({s.t_lo}, {s.t_hi})")
    if not (s.labels == "balanced" or str(s.labels).isdigit()):
        raise ValueError(f"config.sample.labels: expected 'balanced' or a class index, got "
                         f"{s.labels!r}")
    e = config.eval
    _number(e.classifier_steps, "eval.classifier_steps", low=1, integer=True)
    _number(e.classifier_batch_size, "eval.classifier_batch_size", low=1, integer=True)
    _number(e.classifier_seed, "eval.classifier_seed", low=0, integer=True)
    c = config.classify
    for field in ("num_images", "batch_size", "chunk_size"):
        _number(c[field], f"classify.{field}", low=1, integer=True)
    from jaxdiff import classify as DC
    try:
        DC.plan_stages(tuple(c.n_samples), tuple(c.keep), 2)
    except ValueError as e:
        raise ValueError(f"config.classify.n_samples / keep: {e}") from None
    for field, allowed in (("loss", DC.LOSSES), ("weighting", DC.WEIGHTINGS),
                           ("grid", DC.GRIDS), ("time_space", DC.TIME_SPACES)):
        if c[field] not in allowed:
            raise ValueError(f"config.classify.{field}: unknown {c[field]!r}; choose one of "
                             f"{list(allowed)}")
    if c.weighting == "elbo" and c.loss != "l2":
        raise ValueError("config.classify.weighting: 'elbo' needs loss 'l2' (the ELBO is a "
                         f"squared error), got loss {c.loss!r}")
    if len(c.candidates) == 1 or any(isinstance(v, bool) or not isinstance(v, int)
                                     for v in c.candidates):
        raise ValueError(f"config.classify.candidates: give () for every class or at least "
                         f"two int class indices, got {tuple(c.candidates)}")
    if config.mesh.param_rule not in ("replicate", "fsdp"):
        raise ValueError(f"config.mesh.param_rule: unknown {config.mesh.param_rule!r}; choose "
                         f"'replicate' or 'fsdp'")
