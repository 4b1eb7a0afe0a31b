"""Autoguidance (Karras et al., NeurIPS 2024, "Guiding a diffusion model with a bad version of
itself") as a Denoiser -> Denoiser transform.

    guided = D_bad + s (D_good - D_bad)

(the paper's guidance formula: CFG's extrapolation with the bad model in place of the
unconditional one), both denoisers given the same condition (a class, or none): D_bad is a
weaker model of the same task (smaller, and/or trained for fewer steps), s = 1 is the good model
and s = 0 the bad one.  It is evaluated in the algebraically equal form

    guided = D_good + (s - 1) (D_good - D_bad)

so that s = 1 returns D_good bit-for-bit, and a bad model equal to the good one returns D_good
bit-for-bit at every s (the difference is exactly zero).  Guiding the x0-prediction is the same
as guiding eps or the score (the weights sum to one; see ``jaxdiff.guidance.cfg``).

Shapes: x (B, ...), t () or (B,), cond None or a pytree with leading dimension B; the output has
x's shape.  The scale is traced ((), or (B,) per example) and, like CFG, guidance applies only for
t in (t_lo, t_hi] (Kynkäänniemi et al. 2024); elsewhere the good model is used.  The two models
are separate networks, so each call costs one evaluation of each.

Registered as ``autoguidance``: ``config.guidance.bad_workdir`` names the trained bad model's
workdir and ``bad_step`` its checkpoint (-1: the latest).  Its network, schedule and
parameterization come from that workdir's ``config.json`` (written by the train job), the rest
(the EMA chosen by ``sample.ema_index`` included) from the run's config; the bad model must use
the run's dataset and noise schedule.  The paper also guides unconditional models; the registered
builder refuses them (the sample protocol records unconditional runs as unguided), the Python
transform takes ``cond=None``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxdiff.cond import check_cond_batch
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.errors import ConfigError
from jaxdiff.guidance.base import (Guided, check_scale_and_interval, interval_scale,
                                   register_guidance)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Autoguidance(Guided):
    """Guides ``inner`` (the good model) away from a bad version of itself.

    Args:
      inner: the good Denoiser D_good.
      bad: the bad Denoiser D_bad, same schedule and condition format (its parameters traced).
      scale: () or (B,) guidance scale s (traced); 1 is the good model.
      t_lo, t_hi: guidance interval in t (traced); outside it the good model is used.
    """

    inner: DenoiserBase
    bad: DenoiserBase
    scale: Any = 2.0
    t_lo: Any = 0.0
    t_hi: Any = 1.0

    def x0(self, x, t, cond=None):
        if self.bad.schedule != self.inner.schedule:
            raise ValueError(f"Autoguidance: the bad model's schedule {self.bad.schedule!r} "
                             f"differs from the good model's {self.inner.schedule!r}")
        check_cond_batch(cond, x.shape[0])
        t = batch_times(t, x)
        good = self.inner(x, t, cond)
        bad = self.bad(x, t, cond)
        s = interval_scale(self.scale, t, self.t_lo, self.t_hi, x)
        return good + (s - 1.0) * (good - bad)


jax.tree_util.register_dataclass(
    Autoguidance, data_fields=["inner", "bad", "scale", "t_lo", "t_hi"], meta_fields=[])


# ------------------------------------------------------------------------------------------------
# registration: the bad model from a trained workdir
# ------------------------------------------------------------------------------------------------

def _defaults():
    import ml_collections

    return ml_collections.ConfigDict(dict(scale=2.0, t_lo=0.0, t_hi=1.0, bad_workdir="",
                                          bad_step=-1))


def _check(section) -> None:
    from jaxdiff.config import number, path_string

    check_scale_and_interval(section)
    path_string(section.get("bad_workdir"), "guidance.bad_workdir")
    number(section.get("bad_step"), "guidance.bad_step", low=-1, integer=True)


def load_bad_denoiser(section, spec) -> DenoiserBase:
    """The bad model named by ``section`` (bad_workdir, bad_step); see
    ``jaxdiff.jobs.spec.load_other_denoiser``."""
    from jaxdiff.jobs.spec import load_other_denoiser

    if not section.bad_workdir and not callable(getattr(spec, "load_denoiser", None)):
        raise ConfigError("config.guidance.bad_workdir: autoguidance needs the workdir of the "
                          "bad model (a smaller or shorter-trained model of the same data)")
    step = int(section.bad_step)
    return load_other_denoiser(spec, section.bad_workdir, None if step < 0 else step,
                               "guidance.bad_workdir")


@register_guidance("autoguidance", defaults=_defaults, check=_check,
                   evals_per_call=lambda section: 2)
def build_autoguidance(inner, section, spec):
    """Autoguidance of ``inner`` by the bad model of ``section``."""
    if spec.num_classes == 0:
        # The sample protocol records unconditional runs as unguided; refuse rather than write
        # guided samples under a manifest that says otherwise.
        raise ConfigError("config.guidance.name: 'autoguidance' is registered for class-"
                          "conditional runs; guide an unconditional model from Python with "
                          "jaxdiff.guidance.Autoguidance")
    bad = load_bad_denoiser(section, spec)
    if bad.schedule != inner.schedule:
        raise ConfigError(f"config.guidance.bad_workdir: the bad model's schedule "
                          f"{bad.schedule!r} differs from the run's {inner.schedule!r}")
    return Autoguidance(inner, bad, scale=float(section.scale), t_lo=float(section.t_lo),
                        t_hi=float(section.t_hi))
