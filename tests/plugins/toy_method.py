"""A test-only method kit: a guidance transform and a two-network objective that live outside
jaxdiff and reach the command line only by registering (``config.imports``), with no job edited.

  toy_shift      guidance: x0_hat + shift (shift = 0 is the identity, exactly).
  toy_two_net    objective: the denoising loss for the main network, plus an auxiliary linear
                 network (its own parameters and its own Adam state in the objective's extra
                 state) trained in ``update_extra`` to predict each example's mean value from
                 its first row; a host-side counter ``host_calls`` advanced in ``host_update``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdiff.config import number
from jaxdiff.guidance import Guided, register_guidance
from jaxdiff.objectives import Objective, register_objective
from jaxdiff.objectives.denoising import DenoisingObjective


@dataclasses.dataclass(frozen=True)
class Shift(Guided):
    inner: object
    shift: object = 0.0

    def x0(self, x, t, cond=None):
        return self.inner(x, t, cond) + self.shift


jax.tree_util.register_dataclass(Shift, data_fields=["inner", "shift"], meta_fields=[])


def _check_shift(section):
    number(section.shift, "guidance.shift")


@register_guidance("toy_shift", defaults=lambda: ml_collections.ConfigDict(dict(shift=0.0)),
                   check=_check_shift)
def build_shift(inner, section, spec):
    del spec
    return Shift(inner, shift=float(section.shift))


class TwoNetwork(Objective):
    """Denoising for the main network; an auxiliary network with its own optimizer."""

    def __init__(self, spec, config):
        self.main = DenoisingObjective(spec, config)
        self.width = int(spec.example_shape[-2] * spec.example_shape[-1])
        self.aux_opt = optax.adam(float(config.objective.aux_lr))

    def init(self, params, key):
        aux = dict(w=0.01 * jax.random.normal(key, (self.width,)), b=jnp.zeros(()))
        return dict(aux=aux, aux_opt=self.aux_opt.init(aux), host_calls=jnp.zeros((), jnp.int32))

    def loss(self, params, extra, batch, key, step):
        return self.main.loss(params, extra, batch, key, step)

    def _aux_loss(self, aux, x):
        first_row = x.reshape(x.shape[0], -1)[:, : self.width]
        pred = first_row @ aux["w"] + aux["b"]
        return jnp.mean((pred - jnp.mean(x.reshape(x.shape[0], -1), axis=1)) ** 2)

    def update_extra(self, extra, params, batch, key, step):
        del params, key, step
        loss, grads = jax.value_and_grad(self._aux_loss)(extra["aux"], batch["x"])
        updates, opt = self.aux_opt.update(grads, extra["aux_opt"], extra["aux"])
        aux = optax.apply_updates(extra["aux"], updates)
        return dict(extra, aux=aux, aux_opt=opt), dict(aux_loss=loss)

    def host_update(self, extra, step, metrics):
        del step, metrics
        return dict(extra, host_calls=extra["host_calls"] + 1)


def _check_two_net(section, config=None):
    number(section.aux_lr, "objective.aux_lr", low=0.0, low_open=True)


register_objective("toy_two_net", defaults=lambda: ml_collections.ConfigDict(dict(aux_lr=1e-2)),
                   check=_check_two_net)(TwoNetwork)
