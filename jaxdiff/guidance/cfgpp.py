"""CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models (Chung et al.,
arXiv 2406.08070, 2024) as a Denoiser -> Denoiser transform for a known sampling grid.

CFG++ keeps CFG's guided data prediction with a scale lambda in [0, 1],

    x0_hat = x0_u + lambda (x0_c - x0_u)                         (their Eq. 9, in x0 form)

but renoises a DDIM step with the *unconditional* noise (their Algorithm 1):

    x_{t'} = alpha' x0_hat + sigma' eps_u,   eps_u = (x_t - alpha x0_u) / sigma.

In scaled coordinates (y = x / alpha, s = sigma_ve, rho = s' / s) that step is
y' = x0_hat + rho (y - x0_u), while DDIM (eta = 0) and Euler take y' = rho y + (1 - rho) D from
the one prediction D they are given.  The two agree exactly when the transform returns

    D = (x0_hat - rho x0_u) / (1 - rho) = x0_hat + rho / (1 - rho) (x0_hat - x0_u),

so CFG++ is this Denoiser fed to ``ddim`` (eta = 0) or ``euler`` on the grid it was built for:
rho at time t is the grid's next noise level over the current one (t must be a point of the
grid; the final step to zero noise has rho = 0 and returns x0_hat).  At lambda = 0 the
difference is exactly zero and the transform is the unconditional model bit for bit; lambda = 1
is not the conditional model (the renoising stays unconditional).  For higher-order or
stochastic samplers this is not CFG++, and the registered builder refuses them.

Both branches run in one batched call (2 network evaluations per call, as CFG).  The scale is
traced ((), or (B,) per example); the grid's times and noise levels are data fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.cond import check_cond_batch
from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.errors import ConfigError
from jaxdiff.guidance.base import Guided, conditional_and_unconditional, register_guidance

Array = jax.Array
SAMPLERS = ("ddim", "euler")   # the first-order one-evaluation-per-step samplers it is exact for


@dataclasses.dataclass(frozen=True)
class CFGPlusPlus(Guided):
    """CFG++ for the sampling grid (grid_t, grid_sigma_ve).

    Args:
      inner: a conditional Denoiser that also accepts the null condition.
      grid_t: (N + 1,) the grid's times, decreasing (``Grid.t``).
      grid_sigma_ve: (N + 1,) its noise levels s (``Grid.sigma_ve``; 0 at a clean end).
      scale: () or (B,) lambda (traced); 0 is the unconditional model.
      null: the null condition (traced).
    """

    inner: DenoiserBase
    grid_t: Any
    grid_sigma_ve: Any
    scale: Any = 0.6
    null: Any = 0

    def next_ratio(self, t: Array) -> Array:
        """(B,) rho = s_{i+1} / s_i at the grid point i nearest to each time t (B,)."""
        times = jnp.asarray(self.grid_t, jnp.float32)[:-1]
        sig = jnp.asarray(self.grid_sigma_ve, jnp.float32)
        i = jnp.argmin(jnp.abs(times[None, :] - t[:, None]), axis=1)
        return sig[i + 1] / sig[i]

    def x0(self, x, t, cond=None):
        if cond is None:
            raise ValueError("CFG++ needs a condition: cond is None")
        check_cond_batch(cond, x.shape[0])
        t = batch_times(t, x)
        c, u = conditional_and_unconditional(self.inner, x, t, cond, self.null)
        shape = (-1,) + (1,) * (x.ndim - 1)
        lam = jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), t.shape).reshape(shape)
        guided = (1.0 - lam) * u + lam * c
        rho = self.next_ratio(t).reshape(shape)
        return guided + rho / (1.0 - rho) * (guided - u)


jax.tree_util.register_dataclass(
    CFGPlusPlus, data_fields=["inner", "grid_t", "grid_sigma_ve", "scale", "null"],
    meta_fields=[])


def cfgpp(inner: DenoiserBase, grid, scale: Any = 0.6, null: Any = 0) -> CFGPlusPlus:
    """CFG++ of ``inner`` for the sampling ``grid`` (a ``jaxdiff.schedules.Grid``)."""
    return CFGPlusPlus(inner, grid.t, grid.sigma_ve, scale=scale, null=null)


def _defaults():
    import ml_collections

    return ml_collections.ConfigDict(dict(scale=0.6))


def _check(section) -> None:
    from jaxdiff.config import number

    number(section.get("scale"), "guidance.scale")


@register_guidance("cfgpp", defaults=_defaults, check=_check,
                   evals_per_call=lambda section: 2)
def build_cfgpp(inner, section, spec):
    """CFG++ with the section's scale on the run's sampling grid (``config.sample``: steps,
    grid); the sampler must be ddim with eta = 0 or euler."""
    from jaxdiff.schedules import config_sampling_grid

    if spec.num_classes == 0:
        raise ConfigError("config.guidance.name: 'cfgpp' guides class-conditional runs; this "
                          "run has no classes")
    s = spec.config.sample
    if s.sampler not in SAMPLERS or float(dict(s.options).get("eta", 0.0)) != 0.0:
        raise ConfigError(f"config.sample.sampler: CFG++ renoises with the unconditional noise "
                          f"in a first-order deterministic step; use one of {list(SAMPLERS)} "
                          f"(ddim with eta = 0), got {s.sampler!r} with options "
                          f"{dict(s.options)}")
    return cfgpp(inner, config_sampling_grid(inner.schedule, s), scale=float(section.scale),
                 null=spec.null)
