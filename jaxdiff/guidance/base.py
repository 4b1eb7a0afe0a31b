"""What every guidance transform shares, and the registry the sampling job builds from.

A guidance transform is a Denoiser -> Denoiser map: a frozen dataclass deriving from ``Guided``
with an ``inner`` Denoiser, registered as a pytree whose scales are data fields (traced, so a new
scale never recompiles).  Transforms compose: ``CFG(ClassifierGuidance(D, ...), ...)``.

The ``config.guidance`` section names a registered transform (``name``) plus its fields; the
jobs build it with ``build_guidance(inner, config.guidance, spec)``.  A new method registers

    @register_guidance("mine", defaults=lambda: ConfigDict(dict(scale=1.0)), check=...,
                       evals_per_call=lambda section: 2)
    def build(inner, section, spec): return Mine(inner, scale=section.scale)

and reaches ``--mode=sample`` through ``--config.guidance.name=mine`` without editing a job.
``spec`` is the run's ``jaxdiff.jobs.spec.RunSpec`` (num_classes, null condition, schedule).
A transform that needs a second model names it in its section (autoguidance's ``bad_workdir``,
EluCD's ``classifier_dir``) and loads it at build time; a spec object may instead hand it over
from memory through ``spec.load_denoiser(workdir, step)`` / ``spec.load_classifier(path)``
(a host program holding its models, or the conformance test's spec).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import ml_collections

from jaxdiff.cond import null_like
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.errors import ConfigError
from jaxdiff.registry import Registry

GUIDANCE = Registry("guidance")


class Guided(DenoiserBase):
    """Base of guidance transforms: the schedule is the inner Denoiser's."""

    inner: DenoiserBase

    @property
    def schedule(self):
        return self.inner.schedule


@dataclasses.dataclass(frozen=True)
class NullCondition(Guided):
    """The inner model's unconditional prediction whatever the condition (the null token
    ``null``): guiding the unconditional half of a model trained with condition dropout, as
    PPAP guides an unconditional model, while the guidance still sees the labels."""

    inner: DenoiserBase
    null: int = 0

    def x0(self, x, t, cond=None):
        import jax.numpy as jnp

        if cond is None:
            return self.inner(x, t, None)
        return self.inner(x, t, jnp.full_like(jnp.asarray(cond), self.null))


jax.tree_util.register_dataclass(NullCondition, data_fields=["inner"], meta_fields=["null"])


def in_interval(t, t_lo, t_hi):
    """(B,) bool: t in the guidance interval (t_lo, t_hi] (Kynkaanniemi et al. 2024, "Applying
    guidance in a limited interval").  ``t``: (B,)."""
    return (t > t_lo) & (t <= t_hi)


def interval_scale(scale, t, t_lo, t_hi, x):
    """The per-example guidance scale, shaped to broadcast against ``x`` (B, 1, ..., 1):
    ``scale`` (() or (B,)) for t in the interval (t_lo, t_hi] (``in_interval``), 1 (the
    guided-towards model alone) elsewhere.  ``t``: (B,)."""
    import jax.numpy as jnp

    inside = in_interval(t, t_lo, t_hi)
    s = jnp.where(inside, jnp.broadcast_to(jnp.asarray(scale, jnp.float32), t.shape), 1.0)
    return s.reshape((-1,) + (1,) * (x.ndim - 1))


def conditional_and_unconditional(inner: DenoiserBase, x, t, cond, null):
    """(conditional, unconditional) predictions of ``inner`` at (x, t), both branches in ONE
    batched call of batch 2B; ``null`` is the null condition (a class token or a pytree)."""
    import jax
    import jax.numpy as jnp

    b = x.shape[0]
    both = jax.tree_util.tree_map(lambda c, n: jnp.concatenate([c, n]), cond,
                                  null_like(cond, null))
    out = inner(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    return out[:b], out[b:]


def check_scale_and_interval(section) -> None:
    """The ``scale``, ``t_lo`` and ``t_hi`` fields every interval-guided transform has."""
    from jaxdiff.config import number

    number(section.get("scale"), "guidance.scale")
    number(section.get("t_lo"), "guidance.t_lo", low=0.0, high=1.0)
    number(section.get("t_hi"), "guidance.t_hi", low=0.0, high=1.0)
    if section.get("t_lo") >= section.get("t_hi"):
        raise ConfigError(f"config.guidance.t_lo: guidance interval needs t_lo < t_hi, got "
                          f"({section.get('t_lo')}, {section.get('t_hi')})")


def register_guidance(name: str, *, defaults: Callable | None = None,
                      check: Callable | None = None,
                      evals_per_call: Callable | None = None, **meta):
    """Registers ``build(inner, section, spec) -> Denoiser`` under ``name`` (a decorator).

    defaults: () -> ConfigDict of the transform's fields (without ``name``).
    check: check(section) raising ConfigError naming a bad ``config.guidance`` field.
    evals_per_call: section -> network evaluations per guided call (default 1).
    meta: e.g. ``inner_takes_w=True`` for a transform whose inner Denoiser takes a guidance
      weight in its condition; ``switches=(field, ...)`` for float fields whose zero and
      nonzero values build different programs (APG's momentum makes it stateful), all other
      values being traced (both read by tests/test_guidance_conformance.py).
    """
    return GUIDANCE.register(name, defaults=defaults, check=check,
                             evals_per_call=evals_per_call or (lambda section: 1), **meta)


def guidance_config(name: str = "none", **fields) -> ml_collections.ConfigDict:
    """A ``config.guidance`` section: ``name`` plus the transform's default fields, updated by
    ``fields``."""
    return GUIDANCE.section(name, "guidance", **fields)


def check_guidance(section) -> None:
    """Validates a ``config.guidance`` section with its transform's own check."""
    name = section.get("name")
    GUIDANCE.check(name, section, "guidance.name")


def build_guidance(inner: DenoiserBase, section, spec) -> DenoiserBase:
    """The transform ``section.name`` around ``inner`` for the run ``spec``."""
    return GUIDANCE.entry(section.name, "guidance.name").obj(inner, section, spec)


def evals_per_call(section) -> int:
    """Network evaluations one call of the guided denoiser costs (CFG: 2)."""
    return int(GUIDANCE.entry(section.name, "guidance.name").meta["evals_per_call"](section))


@register_guidance("none")
def _no_guidance(inner, section, spec):
    """No transform: the model's own (conditional or unconditional) prediction."""
    del section, spec
    return inner
