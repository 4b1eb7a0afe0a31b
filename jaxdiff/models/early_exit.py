"""DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating Diffusion Model Generation
(Tang et al. 2023, arXiv 2309.17074): exit heads, the timestep-aware uncertainty module and the
batched exit rule, for any network that runs as a sequence of stages.

A *staged* network (the DiT and the U-Nets with ``exit_heads=True``) splits its forward pass as

    state, ctx = net.begin(x, c_noise, cond, key)     # embedding, stem (and a U-Net's encoder)
    state = net.stage(i, state, ctx, key)             # i = 0 .. net.num_stages - 1
    out = net.output(state, ctx)                      # the network's own output layer

and has, for every stage i but the last, an exit head ``net.exit_output(i, state, ctx)`` (the
paper's output layer g_i: a prediction shaped like ``out``) and an uncertainty head
``net.uncertainty[i]`` on ``net.exit_features(i, state)``.  ``key`` is the network's dropout key
(None: deterministic); each stage takes its own sub-key.  ``net(x, c_noise, cond)`` is exactly
the staged pass without exits.

Uncertainty (DeeDiff Eq. 5): u_i = sigmoid(w_i^T [pool(L_i), emb(t)] + b_i), one scalar in (0, 1)
per example and exit, from the stage's mean-pooled features L_i and fixed sinusoidal features of
the noise level (the module is "timestep-aware": the same features predict different errors at
different t).  Its training target and the layer-wise loss are ``jaxdiff.objectives.deediff``.

Exit rule (Sec. 3.3): example b exits at the first stage i whose u_i(b) < threshold and takes
g_i's prediction; examples that never exit take the full output.  Threshold 0 is the full model
(u > 0 always); threshold > 1 exits every example at the first exit.

How a batch exits: the batch runs stage after stage and each example's prediction is fixed at
its exit; as soon as **every** example of the batch has exited, the remaining stages are
skipped (``lax.cond`` around the rest of the network: real skipped work under jit, on CPU and
GPU alike; under ``vmap`` the condition would become a select and nothing would be saved, so the
exit path is never vmapped).  Examples that exit early while others continue still pay for the
stages run; the wall-time saving is therefore the batch's, and it grows as the batch is more
uniform in t, which it is inside a sampler (every example of a sampling batch is at the same
step).  ``bench/early_exit.py`` measures it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models import layers

Array = jax.Array

UNCERTAINTY_FREQ_DIM = 64  # width of the UEM's sinusoidal noise-level features


class UncertaintyHead(nnx.Module):
    """DeeDiff's timestep-aware uncertainty estimation module (Eq. 5) for one exit.

    u = sigmoid(Linear([mean over positions of LN(features), sinusoidal(noise_scale c_noise)]))

    features: (B, ..., C) the stage's activations (tokens or feature maps); c_noise: (B,).
    Returns (B,) float32 in (0, 1).
    """

    def __init__(self, channels: int, *, noise_scale: float, dtype: Any, rngs: nnx.Rngs):
        self.noise_scale = noise_scale
        self.norm = nnx.LayerNorm(channels, dtype=dtype, rngs=rngs)
        self.linear = nnx.Linear(channels + UNCERTAINTY_FREQ_DIM, 1, dtype=dtype, rngs=rngs)

    def __call__(self, features: Array, c_noise: Array) -> Array:
        pooled = jnp.mean(features.reshape(features.shape[0], -1, features.shape[-1]), axis=1)
        temb = layers.sinusoidal_embedding(self.noise_scale * c_noise, UNCERTAINTY_FREQ_DIM)
        z = jnp.concatenate([self.norm(pooled), temb.astype(pooled.dtype)], axis=-1)
        return jax.nn.sigmoid(self.linear(z)[:, 0].astype(jnp.float32))


def is_staged(net) -> bool:
    """Whether ``net`` has exit heads (a staged network built with ``exit_heads=True``)."""
    return getattr(net, "uncertainty", None) is not None


def _require_staged(net) -> None:
    if not is_staged(net):
        raise ValueError(f"{type(net).__name__} has no exit heads: build it with "
                         f"config.model.exit_heads=True")


def all_exits(net, x: Array, c_noise: Array, cond: Any = None,
              dropout_key: Array | None = None) -> tuple[Array, Array]:
    """Every exit's prediction and uncertainty, for training and analysis.

    Returns:
      preds: (N, B, *example_shape) float32, N = net.num_stages; preds[i] is g_i's prediction
        after stage i for i < N - 1 and preds[N - 1] the network's output (``net(...)``).
      u: (N - 1, B) float32 uncertainties of the N - 1 exits.
    """
    _require_staged(net)
    state, ctx = net.begin(x, c_noise, cond, dropout_key)
    c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), (x.shape[0],))
    preds, us = [], []
    for i in range(net.num_stages):
        state = net.stage(i, state, ctx, dropout_key)
        if i < net.num_stages - 1:
            preds.append(net.exit_output(i, state, ctx))
            us.append(net.uncertainty[i](net.exit_features(i, state), c_noise))
    preds.append(net.output(state, ctx))
    return jnp.stack(preds), jnp.stack(us)


def early_exit(net, x: Array, c_noise: Array, cond: Any, threshold: Array
               ) -> tuple[Array, Array, Array]:
    """The network's prediction with DeeDiff's exit rule (see the module docstring).

    Args:
      net: a staged network; x, c_noise, cond as for ``net(x, c_noise, cond)``.
      threshold: () float, traced (changing it does not recompile).
    Returns:
      out: (B, *example_shape) float32.
      exit_stage: (B,) int32, the stage after which each example exited (N - 1: full network).
      stages_run: () int32, how many of the N stages the batch actually ran.
    """
    _require_staged(net)
    n = net.num_stages
    state, ctx = net.begin(x, c_noise, cond)
    c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), (x.shape[0],))
    threshold = jnp.asarray(threshold, jnp.float32)
    out_shape = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    batch_of = lambda m: m.reshape((-1,) + (1,) * (x.ndim - 1))  # noqa: E731

    def rest(i, state, out, exit_stage):
        # Stages i .. n-1 of a batch that has not entirely exited yet.
        state = net.stage(i, state, ctx, None)
        if i == n - 1:
            done = exit_stage < n - 1
            return (jnp.where(batch_of(done), out, net.output(state, ctx)),
                    jnp.where(done, exit_stage, n - 1), jnp.int32(n))
        u = net.uncertainty[i](net.exit_features(i, state), c_noise)
        newly = (exit_stage == n - 1) & (u < threshold)
        pred = jax.lax.cond(jnp.any(newly), lambda s: net.exit_output(i, s, ctx),
                            lambda s: jnp.zeros(out_shape.shape, out_shape.dtype), state)
        out = jnp.where(batch_of(newly), pred, out)
        exit_stage = jnp.where(newly, i, exit_stage)
        return jax.lax.cond(jnp.all(exit_stage < n - 1),
                            lambda *_: (out, exit_stage, jnp.int32(i + 1)),
                            lambda s, o, e: rest(i + 1, s, o, e), state, out, exit_stage)

    return rest(0, state, jnp.zeros(out_shape.shape, out_shape.dtype),
                jnp.full((x.shape[0],), n - 1, jnp.int32))


@dataclasses.dataclass(frozen=True)
class EarlyExitApply:
    """``apply_fn`` of a Denoiser whose params are ``(network params, threshold)``: the NNX
    network ``graphdef`` evaluated with ``early_exit`` (the threshold is traced)."""

    graphdef: Any

    def __call__(self, params, x_in, c_noise, cond, dropout_key=None):
        if dropout_key is not None:
            raise ValueError("an early-exit denoiser is for sampling; train through "
                             "the 'deediff' objective")
        net_params, threshold = params
        return early_exit(nnx.merge(self.graphdef, net_params), x_in, c_noise, cond,
                          threshold)[0]


def early_exit_denoiser(denoiser, threshold) -> Any:
    """The run's network Denoiser (``NNXApply`` of a staged network) with DeeDiff's exit rule at
    ``threshold`` (a traced leaf): a Denoiser like any other, for every sampler and guidance."""
    from jaxdiff.denoiser import Denoiser, NNXApply

    if not isinstance(denoiser.apply_fn, NNXApply):
        raise ValueError("early exit needs the run's network denoiser (an NNX network), "
                         f"got apply_fn {type(denoiser.apply_fn).__name__}")
    return Denoiser(EarlyExitApply(denoiser.apply_fn.graphdef),
                    (denoiser.params, jnp.asarray(threshold, jnp.float32)),
                    denoiser.schedule_, denoiser.param)
