"""The training-objective protocol: what the training job optimises.

An objective is registered in ``OBJECTIVES`` and picked by ``config.objective.name``; the
training job builds it with ``build(spec, config)`` and calls only these methods:

  init(params, key) -> extra
      The objective's own state (any pytree, may be empty ``{}``): frozen networks (a teacher),
      extra trained networks with their own optimizer state (SIM's fake score), and counters
      or stage indices (a curriculum).  ``extra`` lives in the checkpoint's ``train`` item, is
      restored bit-exactly on resume and sharded like the parameters.
  loss(params, extra, batch, key, step) -> (loss, metrics)
      The scalar the job differentiates with respect to ``params`` (the main network).
      batch: dict(x=(B, ...) float32 examples, label=(B,) int32, index=(B,) int32 global
      position of each example in the step's batch); key: the step's PRNG key, a pure function
      of (seed, step); step: () int32.  metrics: dict of scalars.
  update_extra(extra, params, batch, key, step) -> (extra, metrics)
      Runs inside the same compiled step after the main update (``params`` are the new ones):
      trains the extra networks, advances counters.  Default: unchanged.
  host_update(extra, step, metrics) -> extra
      Runs on the host after every step whose metrics were fetched (each ``train.log_every``
      steps): the place for decisions a compiled step cannot take (a curriculum's
      "the loss has plateaued, move to the next stage"). It must be a deterministic function
      of its arguments so a resumed run decides the same. Default: unchanged.

  initial_params(params) -> params
      The main network's parameters at step 0, given its fresh initialisation: a distillation
      starts its student from the teacher's weights.  Default: unchanged.
  summary() -> dict
      What the job's summary should tell about the run (e.g. which checkpoint holds which
      distillation round).  Default: empty.

Every method is pure; all randomness comes from ``key``.  An objective registered with
``family='distill'`` is run by ``--mode=distill`` (``jaxdiff.distill``), every other one by
``--mode=train``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

from jaxdiff.registry import Registry

Array = jax.Array

OBJECTIVES = Registry("objective")


class Objective:
    """Base class with the default ``init`` / ``update_extra`` / ``host_update``."""

    def init(self, params, key: Array) -> Any:
        del params, key
        return {}

    def initial_params(self, params):
        return params

    def summary(self) -> dict:
        return {}

    def loss(self, params, extra, batch: dict, key: Array, step: Array) -> tuple[Array, dict]:
        raise NotImplementedError

    def update_extra(self, extra, params, batch: dict, key: Array, step: Array):
        del params, batch, key, step
        return extra, {}

    def host_update(self, extra, step: int, metrics: dict):
        del step, metrics
        return extra


def register_objective(name: str, *, defaults: Callable | None = None,
                       check: Callable | None = None, **meta):
    """Registers ``build(spec, config) -> Objective`` under ``name`` (a decorator).

    defaults: () -> ConfigDict of the objective's own fields, merged into ``config.objective``.
    check: check(section, config) raising ConfigError naming a bad ``config.objective`` field.
    meta: ``family`` ('distill' for the objectives ``--mode=distill`` runs); for distillations
      ``student_fields``, the network fields the student may set that its teacher lacks
      ('diffusion.x' for a field of ``config.diffusion``); and
      for tests/test_objective_conformance.py ``test_model_overrides`` = {model field: value}
      the objective needs of the network and ``test_config`` = {dotted field: value} the rest
      of the config must hold for its check, and ``test_perturb_extra`` = names of extra-state
      items to move off their initial values (an objective whose loss is zero at init).
    """
    return OBJECTIVES.register(name, defaults=defaults, check=check, **meta)


def objective_config(name: str = "denoising", **fields):
    """A ``config.objective`` section: ``name`` plus the objective's default fields, updated by
    ``fields`` (an unknown field raises ConfigError)."""
    return OBJECTIVES.section(name, "objective", **fields)


def objective_family(config) -> str:
    """'distill' for a distillation objective, 'train' for every other one."""
    return OBJECTIVES.entry(config.objective.name, "objective.name").meta.get("family", "train")


def build_objective(spec, config) -> Objective:
    """The objective ``config.objective.name`` for the run ``spec``."""
    return OBJECTIVES.entry(config.objective.name, "objective.name").obj(spec, config)
