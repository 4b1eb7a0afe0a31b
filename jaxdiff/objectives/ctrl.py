"""Adding Conditional Control to Diffusion Models with Reinforcement Learning (CTRL; Zhao, Uehara,
Scalia, Kung, Biancalani, Levine & Hajiramezanali, ICLR 2025): a pretrained *unconditional*
model p_pre learns a class condition c by maximising, through its own sampler,

    J(theta) = E_c E_{x_{0:T} ~ p_theta(. | c)} [ log p(c | x0) ]
               - alpha KL( p_theta(x_{0:T} | c) || p_pre(x_{0:T}) ),

a KL-regularised RL objective whose reward is a clean classifier's log-probability.  Its
maximiser over all samplers (CTRL, Sec. 4) draws from the tilted target

    p_theta*(x0 | c)  ∝  p_pre(x0) p(c | x0)^(1 / alpha),

so alpha = 1 gives the posterior p_pre(x0 | c) exactly: the class-conditional model of the
pretrained data, with no noisy classifier and no conditional training data.

The rollout.  A DDIM chain with stochasticity eta > 0 (``samplers/ddim.py``; eta = 1 is DDPM's
ancestral sampler) in the scaled coordinates y = x / alpha, s = sigma_ve:

    y' = m(D) + c z,   m(D) = D + k (y - D),   k = sqrt(s'^2 - c^2) / s,
    c = eta s' sqrt(1 - s'^2 / s^2),

so the model's and the pretrained model's transitions from the same state are Gaussians with
one covariance c^2 I and means that differ by (1 - k)(D_theta - D_pre).  The KL of the two path
measures is the expected sum of the per-step Gaussian KLs (the chain rule of KL; CTRL Eq. 6):

    KL_i = (1 - k_i)^2 ||D_theta(y_i) - D_pre(y_i)||^2 / (2 c_i^2)        (``transition_kl``)

along the model's own trajectory.  The final step to a clean end is deterministic (c = 0) and
carries no KL term, as in the official code.  The loss differentiates the reward and the KLs
through the whole rollout (reparameterised noise; the pathwise gradient of J), with
``backprop_steps`` = k > 0 keeping only the last k steps' gradients (the official code's
truncated backpropagation) and ``remat`` recomputing each step in the backward pass.

Differences from the official code (zhaoyl18/CTRL), stated: its KL term is the per-step
Gaussian KL *averaged* over dimensions, ours is the KL itself (summed), so ``alpha`` here is the
coefficient of the true KL and the optimum above holds for it; its truncation point is drawn
anew each step (in [0, 50]), ours is fixed; it adds a zero-initialised class embedding and LoRA
layers to Stable Diffusion, here the whole network is fine-tuned and its class-table rows start
as the pretrained model's null row (``null_row_classes``), so at step 0 the model *is* the
pretrained one for every class and the KL is exactly zero.

In the job: ``config.objective.name = 'ctrl'`` with alpha, steps, grid, eta, backprop_steps,
remat and unroll; ``config.distill.teacher_workdir`` the pretrained model (trained with
``config.diffusion.p_uncond = 1``: its null condition is the unconditional model); run with
``--mode=distill``, which fine-tunes from that checkpoint and resumes after a kill.  The reward
is the evaluation's classifier (``config.eval``; the pinned network where the package ships
one) on x0 as it is (clipping to [-1, 1] would cut the gradient of every pixel outside).  The
data are never read: a batch gives only its labels, the classes the rollouts are drawn for.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff.cond import null_like
from jaxdiff.config import choice, number
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.distill.teacher import frozen, init_from_teacher, load_teacher, teacher_params_like
from jaxdiff.errors import ConfigError
from jaxdiff.objectives.base import Objective, register_objective
from jaxdiff.optim import path_components
from jaxdiff.rng import example_keys, normal_per_example
from jaxdiff.samplers.ddim import ddim_step
from jaxdiff.schedules import GRID_KINDS, Grid, sampling_grid

Array = jax.Array


def transition_kl(d: Array, d_pre: Array, s, s_next, eta) -> Array:
    """KL_i of the module docstring per example: the KL between the DDIM(eta) transitions from
    one scaled state at noise level s to s_next whose x0-predictions are d and d_pre (B, ...);
    returns (B,).  Zero where the step is deterministic (c = 0: eta = 0 or s_next = 0)."""
    c = eta * s_next * jnp.sqrt(jnp.clip(1.0 - (s_next / s) ** 2, 0.0, 1.0))
    k = jnp.sqrt(jnp.maximum(s_next**2 - c**2, 0.0)) / s
    safe_c = jnp.where(c > 0, c, 1.0)
    diff = ((1.0 - k) * (d - d_pre)).reshape(d.shape[0], -1)
    kl = jnp.sum(diff**2, axis=1) / (2.0 * safe_c**2)
    return jnp.where(c > 0, kl, 0.0)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """A rollout of ``kl_rollout``: x0 (B, ...) the samples; kl (B,) the summed per-step KLs;
    step_kl (steps, B) each step's KL."""

    x0: Array
    kl: Array
    step_kl: Array


jax.tree_util.register_dataclass(Rollout, data_fields=["x0", "kl", "step_kl"], meta_fields=[])


def kl_rollout(model: DenoiserBase, pretrained: DenoiserBase, key: Array, shape: tuple,
               cond: Any, pre_cond: Any, grid: Grid, eta, *, indices: Array | None = None,
               backprop_steps: int = 0, remat: bool = False, unroll: bool = False) -> Rollout:
    """The model's DDIM(eta) chain over ``grid`` with the pretrained model's per-step KL.

    model, pretrained: Denoisers (x0-predictions), the pretrained one at ``pre_cond`` (its null
    condition), the model at ``cond``; shape: (B, ...); example j draws its initial noise and
    step i's noise from fold_in(fold_in(key, indices[j]), 0) and (.., i + 1), the sampling
    driver's convention, so with model = pretrained and cond = pre_cond the samples are
    ``samplers.sample(model, key, shape, sampler='ddim', eta=eta, grid=grid)``'s.
    backprop_steps: k > 0 runs the first steps - k steps without gradients (static);
    remat: recompute each differentiated step in the backward pass (memory ~ one step);
    unroll: unroll the differentiated steps' loop (static; on a CPU the backward pass of the
    MNIST-5k U-Net's rolled loop took 12 times as long as the unrolled one).
    """
    keys = example_keys(key, jnp.arange(shape[0]) if indices is None else indices)
    sig = grid.sigma_ve
    eta = jnp.asarray(eta, jnp.float32)

    def step(model, y, i):
        t, a = grid.t[i], grid.alpha[i]
        d = model(a * y, t, cond)
        d_pre = pretrained(a * y, t, pre_cond)   # its input y carries the model's gradient
        z = normal_per_example(keys, i + 1, tuple(shape[1:]))
        return (ddim_step(y, d, sig[i], sig[i + 1], eta, z),
                transition_kl(d, d_pre, sig[i], sig[i + 1], eta))

    def scan(model, y, first, last, checkpointed, unrolled=False):
        body = (lambda y, i: step(model, y, i))
        if checkpointed:
            body = jax.checkpoint(body)
        return jax.lax.scan(body, y, jnp.arange(first, last), unroll=bool(unrolled))

    steps = grid.steps
    k = int(backprop_steps)
    if not 0 <= k <= steps:
        raise ValueError(f"backprop_steps must be in [0, {steps}], got {k}")
    cut = steps - k if k else 0
    y = sig[0] * normal_per_example(keys, 0, tuple(shape[1:]))
    kls = []
    if cut:
        y, kl = scan(frozen(model), y, 0, cut, False)
        y, kl = jax.lax.stop_gradient((y, kl))
        kls.append(kl)
    y, kl = scan(model, y, cut, steps, bool(remat), unroll)
    kls.append(kl)
    step_kl = jnp.concatenate(kls, axis=0)
    return Rollout(x0=grid.alpha[-1] * y, kl=jnp.sum(step_kl, axis=0), step_kl=step_kl)


def ctrl_loss(model: DenoiserBase, pretrained: DenoiserBase, log_prob: Callable, key: Array,
              shape: tuple, cond: Array, pre_cond: Any, grid: Grid, *, alpha, eta,
              indices: Array | None = None, backprop_steps: int = 0,
              remat: bool = False, unroll: bool = False) -> tuple[Array, dict]:
    """-J(theta) of the module docstring on one batch of rollouts:
    mean_j [ -log p(c_j | x0_j) + alpha KL_j ].

    log_prob: (x0 (B, ...), cond (B,)) -> (B,) the reward log p(c | x0) (differentiable in x0);
    alpha: () the KL weight; the rest as ``kl_rollout``.  Returns (scalar, metrics: the batch
    means of the reward and the KL)."""
    roll = kl_rollout(model, pretrained, key, shape, cond, pre_cond, grid, eta, indices=indices,
                      backprop_steps=backprop_steps, remat=remat, unroll=unroll)
    reward = log_prob(roll.x0, cond)
    loss = jnp.mean(-reward + jnp.asarray(alpha, jnp.float32) * roll.kl)
    return loss, {"reward": jnp.mean(reward), "kl": jnp.mean(roll.kl)}


# ------------------------------------------------------------------------------------------------
# the objective
# ------------------------------------------------------------------------------------------------

def null_row_classes(params, null: int):
    """``params`` with every class row of every class table (``class_table/embedding``, rows
    0 .. null - 1) set to its null row ``null``: a network that, for every class, predicts
    what it predicts unconditionally."""
    def one(path, leaf):
        if path_components(path)[-2:] == ("class_table", "embedding") \
                and leaf.shape[0] == null + 1:
            return jnp.broadcast_to(leaf[null], leaf.shape).astype(leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(one, params)


def classifier_log_prob_fn(spec, config) -> Callable:
    """The reward: log softmax of a classifier's logits at the sample's class, on x0 unclipped
    (its gradient reaches every pixel).  The logits are ``spec.classifier_logits(x0)`` where
    the spec supplies them (a test), else the evaluation's feature network (``config.eval``)."""
    from jaxdiff.search.verifiers import classifier_log_prob

    logits_fn = getattr(spec, "classifier_logits", None)
    if logits_fn is None:
        from jaxdiff.classifier_train import own_feature_space

        apply = own_feature_space(config).network.apply
        logits_fn = (lambda x: apply(x)[1])
    return classifier_log_prob(lambda _, x0: logits_fn(x0), None)


class CTRL(Objective):
    """``config.objective.name = 'ctrl'`` (module docstring).  Extra state: the pretrained
    model's parameters (frozen)."""

    def __init__(self, spec, config):
        if spec.num_classes < 1:
            raise ConfigError("config.objective.name='ctrl': CTRL adds a class condition; the "
                              "data (config.data) must have classes")
        self.spec = spec
        self.section = s = config.objective
        self.pretrained = load_teacher(spec, config)
        self.log_prob = classifier_log_prob_fn(spec, config)
        self.grid = sampling_grid(spec.schedule, int(s.steps), str(s.grid))

    def initial_params(self, params):
        return null_row_classes(init_from_teacher(params, self.pretrained.params),
                                self.spec.null)

    def init(self, params, key):
        del key
        return dict(teacher=teacher_params_like(params, self.pretrained.params))

    def loss(self, params, extra, batch, key, step):
        del step
        s = self.section
        labels = batch["label"]
        shape = (labels.shape[0],) + tuple(self.spec.example_shape)
        pretrained = dataclasses.replace(self.pretrained, params=frozen(extra["teacher"]))
        return ctrl_loss(self.spec.denoiser(params), pretrained, self.log_prob, key, shape,
                         labels, null_like(labels, self.spec.null), self.grid,
                         alpha=float(s.alpha), eta=float(s.eta), indices=batch.get("index"),
                         backprop_steps=int(s.backprop_steps), remat=bool(s.remat),
                         unroll=bool(s.unroll))


def ctrl_sampling(config):
    """``config`` set to sample the fine-tuned model with its rollout's own chain (DDIM at the
    objective's eta, grid and steps), unguided: the fine-tuned policy is the conditional model
    itself.  Returns config."""
    from jaxdiff.guidance import guidance_config

    o = config.objective
    config.sample.sampler = "ddim"
    config.sample.options = ml_collections.ConfigDict(dict(eta=float(o.eta)))
    config.sample.grid = str(o.grid)
    config.sample.steps = int(o.steps)
    config.guidance = guidance_config("none")
    return config


def _defaults():
    return ml_collections.ConfigDict(dict(alpha=1.0, steps=20, grid="uniform_t", eta=1.0,
                                          backprop_steps=0, remat=True, unroll=False))


def _check(section, config):
    del config
    number(section.alpha, "objective.alpha", low=0.0)
    number(section.steps, "objective.steps", low=1, integer=True)
    choice(section.grid, "objective.grid", GRID_KINDS)
    number(section.eta, "objective.eta", low=0.0, high=1.0, low_open=True)
    number(section.backprop_steps, "objective.backprop_steps", low=0, integer=True)
    if int(section.backprop_steps) > int(section.steps):
        raise ConfigError(f"config.objective.backprop_steps = {section.backprop_steps}: at most "
                          f"config.objective.steps = {section.steps} (0: every step)")
    for field in ("remat", "unroll"):
        if not isinstance(section[field], bool):
            raise ConfigError(f"config.objective.{field}: must be true or false, got "
                              f"{section[field]!r}")


register_objective("ctrl", defaults=_defaults, check=_check, family="distill",
                   student_fields=("diffusion.p_uncond",),
                   test_config={"objective.steps": 3})(CTRL)
