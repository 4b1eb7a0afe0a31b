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

from typing import Callable

import ml_collections

from jaxdiff.denoiser import DenoiserBase
from jaxdiff.registry import Registry

GUIDANCE = Registry("guidance")


class Guided(DenoiserBase):
    """Base of guidance transforms: the schedule is the inner Denoiser's."""

    inner: DenoiserBase

    @property
    def schedule(self):
        return self.inner.schedule


def register_guidance(name: str, *, defaults: Callable | None = None,
                      check: Callable | None = None,
                      evals_per_call: Callable | None = None):
    """Registers ``build(inner, section, spec) -> Denoiser`` under ``name`` (a decorator).

    defaults: () -> ConfigDict of the transform's fields (without ``name``).
    check: check(section) raising ConfigError naming a bad ``config.guidance`` field.
    evals_per_call: section -> network evaluations per guided call (default 1).
    """
    return GUIDANCE.register(name, defaults=defaults, check=check,
                             evals_per_call=evals_per_call or (lambda section: 1))


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
