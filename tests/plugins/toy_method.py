"""A test-only method kit: a network, a guidance transform and a two-network objective that live
outside jaxdiff and reach the command line only by registering (``config.imports``), with no job
edited.

  toy_mlp        network: examples of any shape flattened -> MLP whose hidden layer is added to
                 the noise-level + class embedding -> reshaped back; zero-initialised output.
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
import numpy as np
import optax

from flax import nnx

from jaxdiff.config import number
from jaxdiff.guidance import Guided, register_guidance
from jaxdiff.models import layers
from jaxdiff.models.networks import NETWORKS, common_defaults, common_kwargs
from jaxdiff.objectives import Objective, register_objective
from jaxdiff.objectives.denoising import DenoisingObjective


class ToyMLP(nnx.Module):
    """x (B, *shape) -> flatten -> Linear -> + emb(c_noise, cond) -> SiLU -> Linear_zero ->
    (B, *shape) float32."""

    def __init__(self, data_shape, num_classes, *, width, dropout, cond_dim, noise_scale,
                 dtype, rngs, guidance_embedding=False):
        self.data_shape = tuple(data_shape)
        size = int(np.prod(self.data_shape))
        self.embed = layers.ConditionEmbedding(width, freq_dim=32, num_classes=num_classes,
                                               cond_dim=cond_dim, noise_scale=noise_scale,
                                               dtype=dtype, rngs=rngs,
                                               guidance_embedding=guidance_embedding)
        self.inp = nnx.Linear(size, width, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(width, size, kernel_init=nnx.initializers.zeros, dtype=dtype,
                              rngs=rngs)
        del dropout

    def __call__(self, x, c_noise, cond=None, dropout_key=None):
        del dropout_key
        c_noise = layers.check_inputs(x, c_noise, self.data_shape)
        h = jax.nn.silu(self.inp(x.reshape(x.shape[0], -1)) + self.embed(c_noise, cond))
        return self.out(h).reshape(x.shape).astype(jnp.float32)


def mlp_config():
    cfg = common_defaults("toy_mlp")
    cfg.width = 64
    return cfg


def _check_mlp(cfg, example_shape, num_classes):
    del example_shape, num_classes
    number(cfg.width, "model.width", low=1, integer=True)


NETWORKS.register(
    "toy_mlp", lambda cfg, shape, k, rngs: ToyMLP(shape, k, width=int(cfg.width), rngs=rngs,
                                                 **common_kwargs(cfg)),
    defaults=mlp_config, check=_check_mlp, test_shape=(4, 3), test_overrides=dict(width=16),
    test_bad_fields=dict(width=0))


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
