"""Experiment configs: the registered sections, the base config and validation.

An experiment config (``configs/*.py``, ``get_config()``) is one ``ml_collections.ConfigDict``:

  seed              int; every random stream derives from it
  imports           modules to import before validation (they register methods: a network,
                    guidance transform, objective, job, ... that lives outside jaxdiff)
  data              see ``jaxdiff.data.default_data_config``
  model             a registered network (``jaxdiff.models.NETWORKS``) and its fields
  diffusion         schedule (+ its parameters), parameterization, loss weighting, time sampler,
                    CFG condition dropout
  objective         the registered training objective (``jaxdiff.objectives``) and its fields
  optim             AdamW, learning-rate schedule, gradient clipping
  train             steps, batch size, EMA decays, logging / sampling / checkpoint cadence
  sample            sampler, its options, grid and counts for the previews and the sampling job
  guidance          the registered guidance transform (``jaxdiff.guidance``) and its fields
  mesh              data / fsdp axes, parameter sharding rule
  stitch            T-Stitch: smaller trained models for the noisy start of every solve
                    (``jaxdiff.combine.tstitch``)
  distributed       'auto' | True | False (``jaxdiff.parallel.maybe_initialize_distributed``)
  ...               the sections jobs register (``eval``, ``classify``)

Every section is registered in ``SECTIONS`` with its defaults and its own check, and
``validate(config)`` runs the checks of every registered section before anything is compiled.
A bad field raises ``ConfigError`` whose message starts with the field, e.g.
``config.optim.lr: must be > 0, got -0.1``.
"""
from __future__ import annotations

import importlib
import math
import numbers

import ml_collections

from jaxdiff.errors import ConfigError
from jaxdiff.registry import Registry

SECTIONS = Registry("config section")
LR_SCHEDULES = ("constant", "cosine")
# The packages whose import registers every component; validation and base_config import them.
COMPONENT_PACKAGES = ("jaxdiff.samplers", "jaxdiff.guidance", "jaxdiff.objectives",
                      "jaxdiff.models", "jaxdiff.combine", "jaxdiff.distill", "jaxdiff.search",
                      "jaxdiff.jobs")


def register_section(name: str, *, defaults, check=None):
    """Registers a top-level config section: ``defaults() -> ConfigDict`` and
    ``check(section, config, num_classes=None, example_shape=None, device_count=None)``."""
    return SECTIONS.register(name, True, defaults=defaults, check=check)


def ensure_registered(config=None) -> None:
    """Imports the component packages and the config's own ``imports`` (idempotent)."""
    for module in COMPONENT_PACKAGES:
        importlib.import_module(module)
    for module in tuple((config or {}).get("imports", ()) or ()):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"config.imports: cannot import {module!r}: {e}") from None


# ------------------------------------------------------------------------------------------------
# checks shared by the sections
# ------------------------------------------------------------------------------------------------

def number(value, field: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, integer: bool = False) -> None:
    """Raises ConfigError unless ``value`` is a finite number (an int if ``integer``) within
    [low, high] (``low`` excluded when ``low_open``); ``field`` is e.g. 'optim.lr'."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"config.{field}: must be {'an int' if integer else 'a number'}, "
                          f"got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"config.{field}: must be {'>' if low_open else '>='} {low}, "
                          f"got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"config.{field}: must be <= {high}, got {value!r}")


def path_string(value, field: str) -> None:
    """Raises ConfigError unless ``value`` is a path (a str; '' means none)."""
    if not isinstance(value, str):
        raise ConfigError(f"config.{field}: must be a path, got {value!r}")


def boolean(value, field: str) -> None:
    """Raises ConfigError unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"config.{field}: must be True or False, got {value!r}")


def choice(value, field: str, allowed) -> None:
    """Raises ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"config.{field}: unknown {value!r}; choose one of {list(allowed)}")


# ------------------------------------------------------------------------------------------------
# the core sections
# ------------------------------------------------------------------------------------------------

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


def _check_diffusion(d, config, **_) -> None:
    from jaxdiff import parameterization as P
    from jaxdiff import schedules
    from jaxdiff.objectives.denoising import TIME_SAMPLERS

    try:
        schedules.get_schedule(d.schedule, **dict(d.schedule_kwargs))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.diffusion.schedule: {e}") from None
    try:
        P.Parameterization(d.parameterization, float(d.sigma_data))
    except ValueError as e:
        raise ConfigError(f"config.diffusion.parameterization: {e}") from None
    choice(d.weighting, "diffusion.weighting", P.WEIGHTINGS)
    choice(d.time_sampler, "diffusion.time_sampler", TIME_SAMPLERS)
    if d.time_sampler == "discrete" and d.schedule != "vp_linear":
        raise ConfigError("config.diffusion.time_sampler: 'discrete' needs schedule 'vp_linear'")
    number(d.p_uncond, "diffusion.p_uncond", low=0.0, high=1.0)
    number(d.min_snr_gamma, "diffusion.min_snr_gamma", low=0.0, low_open=True)


def default_objective_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="denoising"))


def _check_objective(section, config, **_) -> None:
    from jaxdiff.objectives import OBJECTIVES

    OBJECTIVES.check(section.get("name"), section, "objective.name", config=config)


def default_optim_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        lr=2e-4, lr_schedule="cosine", warmup_steps=100, final_lr_fraction=0.1,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
        # {name: m}: the update of every parameter whose path has the component ``name`` (e.g.
        # 'class_table') is multiplied by m, i.e. its learning rate is m x the schedule's
        lr_multipliers=ml_collections.ConfigDict()))


def _check_optim(o, config, **_) -> None:
    number(o.lr, "optim.lr", low=0.0, low_open=True)
    choice(o.lr_schedule, "optim.lr_schedule", LR_SCHEDULES)
    number(o.warmup_steps, "optim.warmup_steps", low=0, integer=True)
    number(o.final_lr_fraction, "optim.final_lr_fraction", low=0.0, high=1.0)
    number(o.weight_decay, "optim.weight_decay", low=0.0)
    number(o.grad_clip, "optim.grad_clip", low=0.0)
    for b in ("b1", "b2"):
        number(o[b], f"optim.{b}", low=0.0, high=1.0)
    for name, m in o.get("lr_multipliers", {}).items():
        number(m, f"optim.lr_multipliers.{name}", low=0.0)


def default_train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=64, ema_decays=(0.999,), ema_warmup=True,
        log_every=50, sample_every=0, checkpoint_every=500, keep_checkpoints=3,
        time_limit_minutes=0.0,            # > 0: stop (with a checkpoint) after this wall time
        max_nonfinite_steps=10,            # halt after this many skipped non-finite steps in a row
        progress_bar=True))


def _check_train(t, config, device_count=None, **_) -> None:
    number(t.num_steps, "train.num_steps", low=1, integer=True)
    number(t.batch_size, "train.batch_size", low=1, integer=True)
    for field in ("log_every", "sample_every", "checkpoint_every"):
        number(t[field], f"train.{field}", low=0, integer=True)
    number(t.keep_checkpoints, "train.keep_checkpoints", low=1, integer=True)
    number(t.time_limit_minutes, "train.time_limit_minutes", low=0.0)
    number(t.max_nonfinite_steps, "train.max_nonfinite_steps", low=1, integer=True)
    if len(t.ema_decays) == 0:
        raise ConfigError("config.train.ema_decays: give at least one EMA decay")
    for i, decay in enumerate(t.ema_decays):
        number(decay, f"train.ema_decays[{i}]", low=0.0, high=1.0)
    if device_count is not None and t.batch_size % device_count:
        raise ConfigError(f"config.train.batch_size: {t.batch_size} is not divisible by the "
                          f"{device_count} devices")


def default_sample_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        sampler="heun", steps=18, grid="karras", ema_index=0,
        options=ml_collections.ConfigDict(),  # the sampler's options, e.g. eta for ddim
        grid_per_class=8, seed=0,
        # the sampling job (--mode=sample)
        num_samples=1000, shard_size=250, labels="balanced", checkpoint_step=-1,
        out_name="",
        # DeeDiff early exit (networks with model.exit_heads): an example leaves the network at
        # the first exit whose uncertainty is below this; 0 runs the full network
        exit_threshold=0.0))


def _check_sample(s, config, **_) -> None:
    from jaxdiff.samplers import SAMPLERS, check_options
    from jaxdiff.schedules import GRID_KINDS

    SAMPLERS.entry(s.sampler, "sample.sampler")
    try:
        check_options(s.sampler, dict(s.options))
    except ValueError as e:
        raise ConfigError(f"config.sample.options: {e}") from None
    number(s.steps, "sample.steps", low=1, integer=True)
    choice(s.grid, "sample.grid", GRID_KINDS)
    number(s.ema_index, "sample.ema_index", low=-1, high=len(config.train.ema_decays) - 1,
           integer=True)
    number(s.grid_per_class, "sample.grid_per_class", low=1, integer=True)
    number(s.num_samples, "sample.num_samples", low=1, integer=True)
    number(s.shard_size, "sample.shard_size", low=1, integer=True)
    number(s.checkpoint_step, "sample.checkpoint_step", low=-1, integer=True)
    number(s.exit_threshold, "sample.exit_threshold", low=0.0)
    if s.exit_threshold > 0 and not config.model.get("exit_heads", False):
        raise ConfigError(f"config.sample.exit_threshold={s.exit_threshold} needs a network "
                          f"with exit heads (config.model.exit_heads=True, trained with "
                          f"config.objective.name='deediff')")
    if not (s.labels == "balanced" or str(s.labels).isdigit()):
        raise ConfigError(f"config.sample.labels: expected 'balanced' or a class index, got "
                          f"{s.labels!r}")


def default_guidance_config() -> ml_collections.ConfigDict:
    from jaxdiff.guidance import guidance_config

    return guidance_config("cfg")


def _check_guidance(section, config, **_) -> None:
    from jaxdiff.guidance import check_guidance

    check_guidance(section)


def default_mesh_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, param_rule="replicate"))


def _check_mesh(m, config, **_) -> None:
    choice(m.param_rule, "mesh.param_rule", ("replicate", "fsdp"))


def _default_data():
    from jaxdiff.data import default_data_config

    return default_data_config()


def _check_data(section, config, **_) -> None:
    from jaxdiff.data import validate_data_config

    validate_data_config(section)


def _default_model():
    from jaxdiff.models import default_unet_config

    return default_unet_config()


def _check_model(section, config, num_classes=None, example_shape=None, **_) -> None:
    from jaxdiff.models import NETWORKS, check_model_config

    if example_shape is None:
        NETWORKS.entry(section.get("name"), "model.name")
    else:
        check_model_config(section, example_shape, num_classes or 0)


register_section("data", defaults=_default_data, check=_check_data)
register_section("model", defaults=_default_model, check=_check_model)
register_section("diffusion", defaults=default_diffusion_config, check=_check_diffusion)
register_section("objective", defaults=default_objective_config, check=_check_objective)
register_section("optim", defaults=default_optim_config, check=_check_optim)
register_section("train", defaults=default_train_config, check=_check_train)
register_section("sample", defaults=default_sample_config, check=_check_sample)
register_section("guidance", defaults=default_guidance_config, check=_check_guidance)
register_section("mesh", defaults=default_mesh_config, check=_check_mesh)


# ------------------------------------------------------------------------------------------------
# the base config, loading and validation
# ------------------------------------------------------------------------------------------------

# Sections whose ``name`` selects a registered component with its own fields.
NAMED_SECTIONS = {"model": ("jaxdiff.models", "NETWORKS"),
                  "objective": ("jaxdiff.objectives", "OBJECTIVES"),
                  "guidance": ("jaxdiff.guidance", "GUIDANCE"),
                  "search": ("jaxdiff.search.config", "SEARCHES")}


def complete_named_sections(config) -> None:
    """Adds to each named section (``NAMED_SECTIONS``) the default fields of the component its
    ``name`` selects that it lacks, in place; fields already there are kept.  So switching a
    component on the command line (``--config.guidance.name=apg``) gets that component's
    defaults.  An unknown name is left for ``validate`` to report."""
    for section, (module, registry) in NAMED_SECTIONS.items():
        reg = getattr(importlib.import_module(module), registry)
        node = config.get(section)
        if node is None or node.get("name") not in reg:
            continue
        defaults = reg.default_config(node.name)
        with node.unlocked():
            for field, value in defaults.items():
                if field not in node:
                    node[field] = value


def base_config(data_cfg, model_cfg) -> ml_collections.ConfigDict:
    """A complete config with every registered section, to be specialised by ``configs/*.py``."""
    ensure_registered()
    config = ml_collections.ConfigDict(dict(seed=0, imports=(), distributed="auto"))
    for name, entry in SECTIONS.items():
        del entry
        config[name] = SECTIONS.default_config(name)
    config.data, config.model = data_cfg, model_cfg
    return config


def load_config_file(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """``get_config()`` of the experiment file ``path`` (e.g. configs/digits.py; as on the
    command line, ``configs/mnist5k_distill.py:sim`` calls ``get_config('sim')``) with
    ``{"train.num_steps": 6, ...}`` applied (lists become tuples).  For scripts and tests; the
    command line uses ml_collections' ``--config.a.b=v`` flags instead.

    Raises KeyError naming an override field the config does not have."""
    import importlib.util

    head, sep, variant = path.rpartition(":")
    if sep and head.endswith(".py") and variant.isidentifier():
        path = head
    else:
        variant = ""
    spec = importlib.util.spec_from_file_location("jaxdiff_experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"unknown config field {dotted!r}")
        node[leaf] = tuple(value) if isinstance(value, list) else value
    ensure_registered(config)
    complete_named_sections(config)
    return config


def validate(config, num_classes: int | None = None, example_shape=None,
             device_count: int | None = None) -> None:
    """Runs every registered section's check (and, if given, against the dataset's classes /
    example shape and the device count). Raises ConfigError naming the field."""
    ensure_registered(config)
    number(config.seed, "seed", low=0, integer=True)
    for name in SECTIONS:
        if name not in config:
            raise ConfigError(f"config.{name}: missing section")
    for name in SECTIONS:
        SECTIONS.check(name, config[name], config=config, num_classes=num_classes,
                       example_shape=example_shape, device_count=device_count)
