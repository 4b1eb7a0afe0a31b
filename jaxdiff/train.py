"""The training job: sharded jit training with EMA, checkpoints, logging and preview grids.

State (a pytree; everything a resumed run needs, so it continues bit-for-bit):
  step       int32 ()           optimizer steps taken
  params     pure dict          network parameters (float32), from ``nnx.split``
  opt_state  optax state
  ema        tuple of pure dicts, one per ``config.train.ema_decays``
  rng        PRNG key           the run's base key; step s uses fold_in(rng, s)

The data position is the step (``jaxdiff.data.BatchSampler`` is stateless), so checkpointing the
state checkpoints the data iterator too.

EMA with warm-up: decay_s = min(decay, (1 + s) / (10 + s)) (as in TF's ExponentialMovingAverage
with num_updates), so early averages are not dominated by the random initialisation.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxdiff import config as C
from jaxdiff import images as I
from jaxdiff import losses, parallel, samplers
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.data import BatchSampler, get_source, load_batch
from jaxdiff.denoiser import Denoiser, NNXApply
from jaxdiff.guidance import CFG
from jaxdiff.models import build_model

Array = jax.Array


# ------------------------------------------------------------------------------------------------
# optimizer and state
# ------------------------------------------------------------------------------------------------

def learning_rate_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
    """Linear warm-up to ``lr``, then constant or cosine decay to ``lr * final_lr_fraction``."""
    warm = int(optim_cfg.warmup_steps)
    lr = float(optim_cfg.lr)
    if optim_cfg.lr_schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        after = optax.cosine_decay_schedule(lr, max(num_steps - warm, 1),
                                            alpha=float(optim_cfg.final_lr_fraction))
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def make_optimizer(optim_cfg, num_steps: int) -> tuple[optax.GradientTransformation,
                                                        optax.Schedule]:
    lr = learning_rate_schedule(optim_cfg, num_steps)
    parts = []
    if optim_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
    parts.append(optax.adamw(lr, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
                             eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay)))
    return optax.chain(*parts), lr


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything static about a run (built once, before compiling)."""

    config: ml_collections.ConfigDict
    graphdef: Any
    schedule: Any
    param: Any
    num_classes: int
    data_shape: tuple[int, int, int]
    optimizer: optax.GradientTransformation
    lr_schedule: optax.Schedule

    def denoiser(self, params) -> Denoiser:
        return Denoiser(NNXApply(self.graphdef), params, self.schedule, self.param)


def build_setup(config, num_classes: int, data_shape) -> tuple[Setup, dict]:
    """Builds the network and optimizer; returns (setup, freshly initialised state)."""
    net = build_model(config.model, data_shape, num_classes, rngs=nnx.Rngs(config.seed))
    graphdef, state = nnx.split(net)
    params = nnx.to_pure_dict(state)
    optimizer, lr = make_optimizer(config.optim, int(config.train.num_steps))
    setup = Setup(config=config, graphdef=graphdef, schedule=C.build_schedule(config.diffusion),
                  param=C.build_parameterization(config.diffusion), num_classes=num_classes,
                  data_shape=tuple(data_shape), optimizer=optimizer, lr_schedule=lr)
    train_state = dict(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        ema=tuple(jax.tree.map(jnp.copy, params) for _ in config.train.ema_decays),
        rng=jax.random.key(int(config.seed) + 1))
    return setup, train_state


def _condition(setup: Setup, labels: Array):
    return labels if setup.num_classes > 0 else None


def make_train_step(setup: Setup):
    """Returns the pure ``train_step(state, images, labels) -> (state, metrics)``.

    images: (B, H, W, C) float32 in [-1, 1]; labels: (B,) int32.  Example j of the global batch
    draws its time / noise / condition dropout from fold_in(fold_in(rng, step), j).
    """
    cfg = setup.config
    d = cfg.diffusion
    decays = tuple(float(x) for x in cfg.train.ema_decays)
    warmup = bool(cfg.train.ema_warmup)
    dropout = float(cfg.model.dropout) > 0

    def loss_fn(params, images, labels, key):
        return losses.denoising_loss(
            setup.denoiser(params), images, _condition(setup, labels), key,
            weighting=d.weighting, time_sampler=d.time_sampler, p_uncond=float(d.p_uncond),
            null=setup.num_classes, min_snr_gamma=float(d.min_snr_gamma),
            p_mean=float(d.p_mean), p_std=float(d.p_std), dropout=dropout)

    def train_step(state, images, labels):
        key = jax.random.fold_in(state["rng"], state["step"])
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], images, labels, key)
        updates, opt_state = setup.optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step = state["step"] + 1
        ema = []
        for decay, avg in zip(decays, state["ema"]):
            if warmup:
                decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
            ema.append(jax.tree.map(lambda a, p, dec=decay: dec * a + (1.0 - dec) * p, avg, params))
        metrics = dict(loss=loss, grad_norm=optax.global_norm(grads),
                       lr=setup.lr_schedule(state["step"]))
        return dict(step=step, params=params, opt_state=opt_state, ema=tuple(ema),
                    rng=state["rng"]), metrics

    return train_step


def state_shardings(state, mesh, rule: str):
    """Shardings for the train state: arrays by the parameter rule, scalars / keys replicated."""
    rep = parallel.replicated(mesh)
    return dict(step=rep, params=parallel.param_shardings(mesh, state["params"], rule),
                opt_state=parallel.param_shardings(mesh, state["opt_state"], rule),
                ema=parallel.param_shardings(mesh, state["ema"], rule), rng=rep)


def place_state(state, shard):
    """Puts a state onto its shardings; leaves already on exactly these shardings are kept.

    Other leaves (the freshly initialised state, a restored PRNG key) hold the same value on
    every process and go through host memory: in a multi-process job ``jax.device_put`` cannot
    move a single-device array onto a sharding that spans other processes' devices, but it
    accepts the same NumPy value on every process.
    """
    def one(x, s):
        if isinstance(x, jax.Array) and x.sharding == s:
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x), s),
                                            impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), s)

    return jax.tree.map(one, state, shard)


def compile_train_step(setup: Setup, state, mesh):
    """jit with the state donated and its shardings pinned; batch sharded over the mesh."""
    shard = state_shardings(state, mesh, setup.config.mesh.param_rule)
    batch = parallel.batch_sharding(mesh)
    return jax.jit(make_train_step(setup), in_shardings=(shard, batch, batch),
                   out_shardings=(shard, parallel.replicated(mesh)), donate_argnums=(0,)), shard


# ------------------------------------------------------------------------------------------------
# preview sampling
# ------------------------------------------------------------------------------------------------

def preview_params(state, ema_index: int):
    return state["params"] if ema_index < 0 else state["ema"][ema_index]


def preview_samples(setup: Setup, params, per_class: int | None = None) -> tuple[Array, Array]:
    """Samples ``per_class`` images of every class (class-major), with CFG from the config.

    Returns (images (N, H, W, C) float32, labels (N,) int32); unconditional models give
    ``per_class ** 2`` images with label 0.
    """
    s = setup.config.sample
    per_class = int(s.grid_per_class if per_class is None else per_class)
    den = setup.denoiser(params)
    if setup.num_classes > 0:
        labels = jnp.repeat(jnp.arange(setup.num_classes, dtype=jnp.int32), per_class)
        den = CFG(den, scale=float(s.cfg_scale), null=setup.num_classes)
        cond = labels
    else:
        labels = jnp.zeros((per_class * per_class,), jnp.int32)
        cond = None
    out = samplers.sample(den, jax.random.key(int(s.seed)), (labels.shape[0],) + setup.data_shape,
                          sampler=s.sampler, steps=int(s.steps), grid=s.grid, cond=cond)
    return jnp.clip(out.x0, -1.0, 1.0), labels


def write_preview(setup: Setup, state, path: str) -> str:
    s = setup.config.sample
    imgs, _ = preview_samples(setup, preview_params(state, int(s.ema_index)))
    rows = setup.num_classes if setup.num_classes > 0 else int(s.grid_per_class)
    upscale = max(1, 64 // setup.data_shape[0])
    return I.save_grid(path, np.asarray(jax.device_get(imgs)), rows=rows, upscale=upscale)


# ------------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------------

class _StopFlag:
    """Set by SIGTERM / SIGINT; the loop checkpoints and returns at the next step boundary."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._set)
            except ValueError:  # not in the main thread
                pass
        return self

    def _set(self, signum, frame):
        del frame
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _log_line(step: int, num_steps: int, m: dict, steps_per_s: float, batch: int) -> str:
    return (f"step {step}/{num_steps}  loss {m['loss']:.4f}  grad_norm {m['grad_norm']:.3f}  "
            f"lr {m['lr']:.2e}  {steps_per_s:.2f} steps/s  {steps_per_s * batch:.1f} images/s")


def train(config, workdir: str) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns a summary dict (also written as
    ``workdir/train_summary.json``)."""
    C.validate(config)
    parallel.maybe_initialize_distributed(config)
    mesh = parallel.make_mesh(config.mesh)
    tc = config.train
    C.validate(config, device_count=mesh.size)
    source = get_source(config.data, "train")
    # Validate against the data before build_setup: initialising the network already compiles.
    C.validate(config, num_classes=source.num_classes, data_shape=source.image_shape,
               device_count=mesh.size)
    setup, state = build_setup(config, source.num_classes, source.image_shape)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    step_fn, shard = compile_train_step(setup, state, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=int(tc.keep_checkpoints),
                        save_interval_steps=int(tc.checkpoint_every) or 10**12)
    start = 0
    if ckpt.latest_step() is not None:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                                if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                                else x, state, shard)
        state, _ = ckpt.restore(target=abstract)
        start = int(jax.device_get(state["step"]))
        if is_main:
            print(f"resumed from {ckpt.directory} at step {start}", flush=True)
    state = place_state(state, shard)

    sampler = BatchSampler(num_examples=len(source), global_batch_size=int(tc.batch_size),
                           seed=int(config.seed), process_index=jax.process_index(),
                           process_count=jax.process_count())
    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(workdir, "tb"))
    bar = None
    if is_main and tc.progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=int(tc.num_steps), initial=start, desc="train", unit="step",
                   dynamic_ncols=True)

    num_steps = int(tc.num_steps)
    deadline = time.time() + 60 * float(tc.time_limit_minutes) if tc.time_limit_minutes else None
    step = start
    t_last, step_last, last_metrics = time.time(), start, None
    reason = "finished"
    saved_step = start
    compile_s = None
    with _StopFlag() as stop:
        while step < num_steps:
            images, labels = load_batch(source, sampler, step, bool(config.data.random_flip))
            batch = parallel.global_batch((images, labels), mesh)
            t0 = time.time()
            state, metrics = step_fn(state, *batch)
            step += 1
            if compile_s is None:
                jax.block_until_ready(metrics)
                compile_s = time.time() - t0
            if bar is not None:
                bar.update(1)
            if tc.log_every and (step % tc.log_every == 0 or step == num_steps):
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.time()
                rate = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last, last_metrics = now, step, m
                if is_main:
                    line = _log_line(step, num_steps, m, rate, int(tc.batch_size))
                    (bar.write if bar is not None else print)(line)
                    for k, v in m.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/steps_per_s", rate, step)
                    writer.add_scalar("train/images_per_s", rate * int(tc.batch_size), step)
            if ckpt.save(step, state):
                saved_step = step
            if tc.sample_every and step % tc.sample_every == 0 and step < num_steps and is_main:
                write_preview(setup, state, os.path.join(workdir, "samples",
                                                         f"step_{step:07d}.png"))
            if stop.signal is not None:
                reason = f"signal {stop.signal}"
                break
            if deadline is not None and time.time() > deadline:
                reason = "time limit"
                break
    if saved_step != step:
        ckpt.save(step, state, force=True)
    ckpt.wait_until_finished()
    if bar is not None:
        bar.close()
    grid_path = None
    if is_main and stop.signal is None:
        grid_path = write_preview(setup, state, os.path.join(workdir, "samples", "final.png"))
    summary = dict(step=step, num_steps=num_steps, stopped=reason, last_metrics=last_metrics,
                   first_step_seconds_incl_compile=compile_s, sample_grid=grid_path,
                   devices=jax.device_count(), processes=jax.process_count())
    if is_main:
        with open(os.path.join(workdir, "train_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if writer is not None:
            writer.close()
        print(f"stopped at step {step} ({reason}); checkpoint in {ckpt.directory}"
              + (f"; samples in {grid_path}" if grid_path else ""), flush=True)
    ckpt.close()
    return summary
