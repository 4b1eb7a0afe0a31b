"""Steered Diffusion (Nair et al., ICCV 2023, "Steered Diffusion: A Generalized Framework for
Plug-and-Play Conditional Image Synthesis") as a Denoiser -> Denoiser transform.

An unconditional (or conditional) denoiser is steered at inference time by a loss between the
measurement y and an inverse model, or forward degradation, A applied to the denoiser's own
clean estimate x0_hat(x_t).  The paper modifies the noise prediction of its DDIM step,

    eps_tilde = eps_hat + s sqrt(1 - abar_t) grad_{x_t} l(y, A(x0_hat(x_t))),

and since x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (alpha = sqrt(abar), sigma =
sqrt(1 - abar)) the same step on the x0-prediction reads

    x0_tilde = x0_hat - s (sigma^2 / alpha) grad_{x_t} l(y, A(x0_hat(x_t))).

The gradient is taken with respect to the noisy state x_t, through the denoiser: the authors'
code enables gradients on x_t, evaluates the model and the loss on its x0-prediction and
differentiates back to x_t (a vector-Jacobian product through the network).  That is the
default here (``through_denoiser=True``); ``through_denoiser=False`` holds x0_hat fixed and
uses grad_{x0} l at x0_hat (no backpropagation through the network, as EluCD).
The paper's optional resampling loop (re-noise and repeat the step N times) belongs to the
sampler, not the denoiser: it is the driver option ``resample=N`` of
``jaxdiff.samplers.sample`` (``docs/guidance.md``).

s = 0 returns the inner denoiser's prediction itself (a ``lax.cond`` on the traced scale skips
the gradient; a concrete 0 outside a trace calls the inner model directly), so s = 0 with
resample = 1 is plain sampling of the inner model bit-for-bit.

Losses (per example, summed over the measurement): 'l2' 0.5 ||y - A(x0)||^2, so that with
s = 1 / s_y^2 the step adds the gradient of the Gaussian log-likelihood log N(y; A x0_hat,
s_y^2 I) of the clean estimate; 'l1' ||y - A(x0)||_1.

Shapes: x (B, ...), t () or (B,), cond passed to the inner denoiser unchanged; y either
(B, *measurement) (one measurement per example) or (*measurement) (shared by the batch: all
samples are posterior samples for one measurement); scale () or (B,), traced; y and the
operator's arrays (a mask) are traced too.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.denoiser import DenoiserBase, batch_times
from jaxdiff.errors import ConfigError
from jaxdiff.guidance import operators as O
from jaxdiff.guidance.base import Guided, register_guidance

Array = jax.Array

LOSSES = ("l2", "l1")


def measurement_loss(y: Array, a_x0: Array, kind: str = "l2") -> Array:
    """(B,) per-example loss between measurements y and A(x0), both (B, ...)."""
    r = (y - a_x0).reshape(a_x0.shape[0], -1)
    if kind == "l2":
        return 0.5 * jnp.sum(r * r, axis=1)
    if kind == "l1":
        return jnp.sum(jnp.abs(r), axis=1)
    raise ValueError(f"Steered: unknown loss {kind!r}; choose one of {list(LOSSES)}")


def _concrete(v):
    """``v`` as a float64 array when it is a concrete number or array; None when it is traced
    or anything else (a placeholder leaf of a pytree operation)."""
    if isinstance(v, jax.core.Tracer) or isinstance(v, bool):
        return None
    if isinstance(v, (int, float, np.number, np.ndarray, jax.Array)):
        return np.asarray(v, np.float64)
    return None


@dataclasses.dataclass(frozen=True)
class Steered(Guided):
    """Steers ``inner`` towards the measurement ``y`` of the operator ``operator``.

    Args:
      inner: the denoiser to steer (it receives the same cond).
      operator: A, a pytree callable (B, ...) -> (B, *measurement), e.g. an
        ``operators.Inpaint(mask)``; its arrays are traced.
      y: the measurement, (B, *measurement) or (*measurement) shared by the batch (traced).
      scale: s >= 0, () or (B,) (traced).
      loss: 'l2' or 'l1' (static).
      through_denoiser: differentiate through the denoiser w.r.t. x_t (the paper; default) or
        hold x0_hat fixed (static).
    """

    inner: DenoiserBase
    operator: Any
    y: Any
    scale: Any = 1.0
    loss: str = "l2"
    through_denoiser: bool = True

    def __post_init__(self):
        s = _concrete(self.scale)
        if s is not None and not np.all(s >= 0):  # also refuses NaN
            raise ValueError(f"Steered: the scale must be >= 0, got {self.scale!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"Steered: unknown loss {self.loss!r}; choose one of "
                             f"{list(LOSSES)}")

    def _measurement(self, a_x0: Array) -> Array:
        y = jnp.asarray(self.y, a_x0.dtype)
        if y.shape == a_x0.shape[1:]:
            return jnp.broadcast_to(y, a_x0.shape)
        if y.shape != a_x0.shape:
            raise ValueError(f"Steered: the measurement has shape {tuple(y.shape)}; the "
                             f"operator gives {tuple(a_x0.shape)} for this batch (give that "
                             f"shape or {tuple(a_x0.shape[1:])} shared by the batch)")
        return y

    def _steered(self, x, t, cond):
        if self.through_denoiser:
            def total(z):
                x0 = self.inner(z, t, cond)
                a = self.operator(x0)
                return jnp.sum(measurement_loss(self._measurement(a), a, self.loss)), x0

            grad, x0_hat = jax.grad(total, has_aux=True)(x)
        else:
            x0_hat = self.inner(x, t, cond)

            def total(z):
                a = self.operator(z)
                return jnp.sum(measurement_loss(self._measurement(a), a, self.loss))

            grad = jax.grad(total)(jax.lax.stop_gradient(x0_hat))
        alpha, sigma = self.schedule.alpha_sigma(t)
        s = jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), t.shape)
        coef = (s * sigma**2 / alpha).reshape((-1,) + (1,) * (x.ndim - 1))
        return x0_hat - coef * grad

    def x0(self, x, t, cond=None):
        t = batch_times(t, x)
        known = _concrete(self.scale)
        if known is not None and np.all(known == 0):   # a concrete zero: the inner model itself
            return self.inner(x, t, cond)
        s = jnp.asarray(self.scale, jnp.float32)
        return jax.lax.cond(jnp.all(s == 0), lambda: self.inner(x, t, cond),
                            lambda: self._steered(x, t, cond))


jax.tree_util.register_dataclass(
    Steered, data_fields=["inner", "operator", "y", "scale"],
    meta_fields=["loss", "through_denoiser"])


# ------------------------------------------------------------------------------------------------
# registration: the operator and the measured image from the config
# ------------------------------------------------------------------------------------------------

def _defaults():
    import ml_collections

    return ml_collections.ConfigDict(dict(
        scale=1.0,               # s of the steering step (>= 0; 0: the inner model)
        operator="inpaint",      # 'inpaint' | 'super_resolution' | 'colorize' | 'deblur'
        mask_fraction=0.5,       # inpaint: fraction of values hidden (a fixed random mask)
        mask_seed=0,             # inpaint: the mask's seed
        factor=4,                # super_resolution: the average-pooling factor
        blur_std=2.0,            # deblur: the Gaussian's width in pixels
        blur_size=9,             # deblur: the kernel's (odd) size
        noise_std=0.0,           # measurement noise s_y added to A(image) (seeded by mask_seed)
        loss="l2",               # 'l2' (0.5 squared error) | 'l1'
        through_denoiser=True,   # the gradient w.r.t. x_t through the network (the paper)
        images="",               # .npy of clean held-out examples; "": a zero example
        image_index=0,           # which of them is measured
    ))


def _check(section) -> None:
    from jaxdiff.config import boolean, choice, number, path_string

    number(section.get("scale"), "guidance.scale", low=0.0)
    choice(section.get("operator"), "guidance.operator", O.OPERATORS)
    number(section.get("mask_fraction"), "guidance.mask_fraction", low=0.0, high=1.0)
    number(section.get("mask_seed"), "guidance.mask_seed", low=0, integer=True)
    number(section.get("factor"), "guidance.factor", low=1, integer=True)
    number(section.get("blur_std"), "guidance.blur_std", low=0.0, low_open=True)
    number(section.get("blur_size"), "guidance.blur_size", low=1, integer=True)
    if section.blur_size % 2 == 0:
        raise ConfigError(f"config.guidance.blur_size: must be odd, got {section.blur_size}")
    number(section.get("noise_std"), "guidance.noise_std", low=0.0)
    choice(section.get("loss"), "guidance.loss", LOSSES)
    boolean(section.get("through_denoiser"), "guidance.through_denoiser")
    path_string(section.get("images"), "guidance.images")
    number(section.get("image_index"), "guidance.image_index", low=0, integer=True)


def operator_from_config(section, example_shape: tuple[int, ...]):
    """The operator the section names, for examples of ``example_shape``."""
    name = section.operator
    if name == "inpaint":
        return O.Inpaint(O.random_mask(example_shape, float(section.mask_fraction),
                                       int(section.mask_seed)))
    if name == "super_resolution":
        return O.AvgPool(int(section.factor))
    if name == "colorize":
        return O.Grey()
    return O.GaussianBlur(float(section.blur_std), int(section.blur_size))


def measured_example(section, example_shape: tuple[int, ...]) -> np.ndarray:
    """The clean example whose measurement steers: ``images[image_index]`` of the section's
    .npy file (shape (N, *example_shape) or example_shape), or zeros without a file."""
    shape = tuple(example_shape)
    if not section.images:
        return np.zeros(shape, np.float32)
    try:
        images = np.load(section.images)
    except (OSError, ValueError) as e:
        raise ConfigError(f"config.guidance.images: cannot read {section.images!r}: {e}") from None
    if images.shape == shape:
        images = images[None]
    if images.shape[1:] != shape:
        raise ConfigError(f"config.guidance.images: examples of shape {images.shape[1:]}, the "
                          f"run's are {shape}")
    if not section.image_index < len(images):
        raise ConfigError(f"config.guidance.image_index: {section.image_index} is out of range "
                          f"for {len(images)} images")
    return np.asarray(images[section.image_index], np.float32)


@register_guidance("steered", defaults=_defaults, check=_check,
                   evals_per_call=lambda section: 1)
def build_steered(inner, section, spec):
    """Steered Diffusion around ``inner`` for one measured example: every sample of the run is a
    steered sample for y = A(image) + noise_std * n.  ``spec.example_shape`` gives the shapes."""
    shape = tuple(int(d) for d in spec.example_shape)
    image = measured_example(section, shape)
    try:
        op = operator_from_config(section, shape)
        y = np.asarray(op(jnp.asarray(image)[None])[0])
    except ValueError as e:
        raise ConfigError(f"config.guidance.operator: {e}") from None
    if section.noise_std > 0:
        rng = np.random.default_rng(int(section.mask_seed) + 1)
        y = y + float(section.noise_std) * rng.standard_normal(y.shape).astype(np.float32)
    return Steered(inner, op, jnp.asarray(y, jnp.float32), scale=float(section.scale),
                   loss=str(section.loss), through_denoiser=bool(section.through_denoiser))
