"""The training job: any registered objective, sharded jit steps, EMA, checkpoints, previews;
and the distillation job (``--mode=distill``), the same loop with a distillation objective.

State (a pytree of two parts, the two checkpoint items; everything a resumed run needs, so it
continues bit-for-bit):
  model   dict(params=pure dict of the network's float32 parameters,
               ema=tuple of pure dicts, one per ``config.train.ema_decays``)
  train   dict(step=int32 () optimizer steps taken, opt_state=optax state,
               rng=PRNG key (step s uses fold_in(rng, s)), extra=the objective's own state)

The objective (``config.objective.name``, ``jaxdiff.objectives``) gives the loss and may carry
extra networks (a frozen teacher; a second trained network with its own optimizer state) in
``train.extra``.  The data position is the step (``jaxdiff.data.BatchSampler`` is stateless and
the grain pipeline reads the batches of steps [start, num_steps) in order), so checkpointing the
state checkpoints the data iterator too.

EMA with warm-up: decay_s = min(decay, (1 + s) / (10 + s)) (as in TF's ExponentialMovingAverage
with num_updates), so early averages are not dominated by the random initialisation.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import config as C
from jaxdiff import images as I
from jaxdiff import parallel, samplers
from jaxdiff.data import BatchSampler, batch_iterator, get_source
from jaxdiff.errors import ConfigError, NonFiniteError
from jaxdiff.jobs import rundir
from jaxdiff.jobs.spec import RunSpec, build_spec, open_checkpoints, register_job
from jaxdiff.jsonio import write_json
from jaxdiff.objectives import Objective, build_objective, objective_family
from jaxdiff.optim import check_lr_multipliers, lr_multipliers, scale_by_path

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
    """Gradient clipping (if > 0), AdamW on the learning-rate schedule, then the per-parameter
    learning-rate multipliers ``optim.lr_multipliers`` (if any)."""
    lr = learning_rate_schedule(optim_cfg, num_steps)
    parts = []
    if optim_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
    parts.append(optax.adamw(lr, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
                             eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay)))
    multipliers = lr_multipliers(optim_cfg)
    if multipliers:
        parts.append(scale_by_path(multipliers))
    return optax.chain(*parts), lr


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Everything static about a training run (built once, before compiling)."""

    spec: RunSpec
    objective: Objective
    optimizer: optax.GradientTransformation
    lr_schedule: optax.Schedule

    @property
    def config(self):
        return self.spec.config


def build_trainer(config, num_classes: int, example_shape,
                  kind: str | None = None) -> tuple[Trainer, dict]:
    """Builds the run; returns (trainer, freshly initialised state)."""
    spec = build_spec(config, num_classes, example_shape, kind)
    objective = build_objective(spec, config)
    params = objective.initial_params(spec.init_params())
    check_lr_multipliers(params, lr_multipliers(config.optim))
    optimizer, lr = make_optimizer(config.optim, int(config.train.num_steps))
    rng = jax.random.key(int(config.seed) + 1)
    extra = objective.init(params, jax.random.key(int(config.seed) + 2))
    state = dict(
        model=dict(params=params,
                   ema=tuple(jax.tree.map(jnp.copy, params) for _ in config.train.ema_decays)),
        train=dict(step=jnp.zeros((), jnp.int32), opt_state=optimizer.init(params), rng=rng,
                   extra=extra))
    return Trainer(spec, objective, optimizer, lr), state


def make_train_step(trainer: Trainer):
    """Returns the pure ``train_step(state, batch) -> (state, metrics)``.

    batch: dict(x=(B, ...) float32 examples, label=(B,) int32).  The objective's loss gets the
    step's key fold_in(rng, step); example j of the global batch draws its own randomness from
    fold_in of that key with j (``jaxdiff.rng``).  A step with a non-finite loss or gradient
    keeps the parameters, EMAs, optimizer and objective state and only advances the step;
    ``metrics['nonfinite']`` is 1 for it (the job counts these and halts on a run of them).
    """
    cfg = trainer.config
    decays = tuple(float(x) for x in cfg.train.ema_decays)
    warmup = bool(cfg.train.ema_warmup)
    objective = trainer.objective

    def train_step(state, batch):
        model, tr = state["model"], state["train"]
        step = tr["step"]
        key = jax.random.fold_in(tr["rng"], step)
        (loss, obj_metrics), grads = jax.value_and_grad(objective.loss, has_aux=True)(
            model["params"], tr["extra"], batch, key, step)
        updates, opt_state = trainer.optimizer.update(grads, tr["opt_state"], model["params"])
        params = optax.apply_updates(model["params"], updates)
        new_step = step + 1
        ema = []
        for decay, avg in zip(decays, model["ema"]):
            if warmup:
                decay = jnp.minimum(decay, (1.0 + new_step) / (10.0 + new_step))
            ema.append(jax.tree.map(lambda a, p, dec=decay: dec * a + (1.0 - dec) * p, avg, params))
        extra, extra_metrics = objective.update_extra(
            tr["extra"], params, batch, jax.random.fold_in(key, 1), step)
        grad_norm = optax.global_norm(grads)
        # The non-finite guard: a step whose loss or gradient is NaN/Inf changes nothing but
        # the step (its batch is consumed), so the state stays that of the last finite step.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        model, opt_state, extra = jax.lax.cond(
            finite, lambda new, old: new, lambda new, old: old,
            (dict(params=params, ema=tuple(ema)), opt_state, extra),
            (model, tr["opt_state"], tr["extra"]))
        metrics = dict(obj_metrics, **extra_metrics, loss=loss, grad_norm=grad_norm,
                       lr=trainer.lr_schedule(step), nonfinite=1 - finite.astype(jnp.int32))
        return dict(model=model, train=dict(step=new_step, opt_state=opt_state, rng=tr["rng"],
                                            extra=extra)), metrics

    return train_step


def state_shardings(state, mesh, rule: str):
    """Shardings for the state: arrays by the parameter rule, the step and key replicated."""
    rep = parallel.replicated(mesh)
    by_rule = lambda tree: parallel.param_shardings(mesh, tree, rule)  # noqa: E731
    return dict(model=by_rule(state["model"]),
                train=dict(step=rep, opt_state=by_rule(state["train"]["opt_state"]), rng=rep,
                           extra=by_rule(state["train"]["extra"])))


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


def compile_train_step(trainer: Trainer, state, mesh):
    """jit with the state donated and its shardings pinned; batch sharded over the mesh."""
    shard = state_shardings(state, mesh, trainer.config.mesh.param_rule)
    batch = parallel.batch_sharding(mesh)
    return jax.jit(make_train_step(trainer), in_shardings=(shard, batch),
                   out_shardings=(shard, parallel.replicated(mesh)), donate_argnums=(0,)), shard


# ------------------------------------------------------------------------------------------------
# preview sampling
# ------------------------------------------------------------------------------------------------

def preview_params(model, ema_index: int):
    """The raw parameters (ema_index -1) or EMA ``ema_index`` of a ``model`` item."""
    return model["params"] if ema_index < 0 else model["ema"][ema_index]


def preview_samples(spec: RunSpec, params, per_class: int | None = None) -> tuple[Array, Array]:
    """Samples ``per_class`` examples of every class (class-major), guided by the config.

    Returns (samples (N, *example_shape) float32 clipped to [-1, 1], labels (N,) int32);
    unconditional models give ``per_class ** 2`` samples with label 0.
    """
    s = spec.config.sample
    per_class = int(s.grid_per_class if per_class is None else per_class)
    if spec.num_classes > 0:
        labels = jnp.repeat(jnp.arange(spec.num_classes, dtype=jnp.int32), per_class)
    else:
        labels = jnp.zeros((per_class * per_class,), jnp.int32)
    out = samplers.sample(spec.guided(params, stitch=False), jax.random.key(int(s.seed)),
                          (labels.shape[0],) + spec.example_shape, sampler=s.sampler,
                          steps=int(s.steps), grid=s.grid, cond=spec.condition(labels),
                          **dict(s.options))
    return jnp.clip(out.x0, -1.0, 1.0), labels


def write_preview(spec: RunSpec, model, path: str) -> str | None:
    """A PNG grid of preview samples (one row per class) for image data; None otherwise."""
    if spec.kind != "image":
        return None
    s = spec.config.sample
    imgs, _ = preview_samples(spec, preview_params(model, int(s.ema_index)))
    rows = spec.num_classes if spec.num_classes > 0 else int(s.grid_per_class)
    upscale = max(1, 64 // spec.example_shape[0])
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


def _log_line(step: int, num_steps: int, m: dict, steps_per_s: float, batch: int,
              skipped: int) -> str:
    return (f"step {step}/{num_steps}  loss {m['loss']:.4f}  grad_norm {m['grad_norm']:.3f}  "
            f"lr {m['lr']:.2e}  {steps_per_s:.2f} steps/s  {steps_per_s * batch:.1f} images/s"
            + (f"  skipped {skipped} non-finite" if skipped else ""))


class _Divergence:
    """Counts the steps the non-finite guard skipped, one step behind the device (reading a
    step's flag waits for that step only, so the next one is already queued)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.total = 0
        self.run = 0            # skipped steps in a row, ending at the last one read
        self.run_start = None
        self._pending = None    # (step, device flag) not read yet

    def push(self, step: int, flag) -> None:
        self.flush()
        self._pending = (step, flag)

    def flush(self) -> None:
        if self._pending is None:
            return
        step, flag = self._pending
        self._pending = None
        if int(jax.device_get(flag)):
            self.total += 1
            self.run_start = step if self.run == 0 else self.run_start
            self.run += 1
        else:
            self.run = 0

    @property
    def diverged(self) -> bool:
        return self.run >= self.limit

    def message(self, config, latest_checkpoint) -> str:
        end = self.run_start + self.run - 1
        return (f"training diverged: the loss or gradient was non-finite in {self.run} steps in "
                f"a row (steps {self.run_start}-{end}; config.train.max_nonfinite_steps="
                f"{self.limit}); each was skipped, and the newest checkpoint (step "
                f"{latest_checkpoint}) holds finite parameters. Likely cause: a learning rate "
                f"too high for this model (config.optim.lr={config.optim.lr}); lower it or set "
                f"config.optim.grad_clip, then resume with the same --workdir")


def _restore_state(ckpt, state, shard):
    """The newest readable checkpoint restored onto the state's shardings."""
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                            if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                            else x, state, shard)
    restored, _ = ckpt.restore(target=abstract)
    return restored


def _check_family(config, mode: str) -> None:
    """The objective must be one this mode runs: distillations ``--mode=distill``, every other
    one ``--mode=train``."""
    C.ensure_registered(config)
    family = objective_family(config)
    if family != mode:
        what = "a distillation" if family == "distill" else "not a distillation"
        raise ConfigError(f"config.objective.name={config.objective.name!r} is {what}: run it "
                          f"with --mode={family}")


def _preflight(config, workdir: str, earlier) -> None:
    del earlier
    _check_family(config, "train")
    rundir.check_compatible(workdir, config, "train")


def _distill_preflight(config, workdir: str, earlier) -> None:
    del earlier
    from jaxdiff.distill.teacher import check_student, check_teacher_exists
    from jaxdiff.objectives import OBJECTIVES

    _check_family(config, "distill")
    check_teacher_exists(config)
    fields = OBJECTIVES.entry(config.objective.name).meta.get("student_fields", ())
    check_student(config, fields)
    rundir.check_compatible(workdir, config, "train")


@register_job("train", preflight=_preflight)
def train(config, workdir: str) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns a summary dict (also written as
    ``workdir/train_summary.json``).  See ``run_training``."""
    return run_training(config, workdir, "train")


@register_job("distill", preflight=_distill_preflight)
def distill(config, workdir: str) -> dict:
    """Distils the model of ``config.distill.teacher_workdir`` into a student in ``workdir``
    with the distillation objective ``config.objective`` (``jaxdiff.distill``): the training
    loop of ``--mode=train`` (checkpoints, exact resume, previews), whose student starts from
    the teacher's weights and whose teacher rides in the objective's extra state (restored
    from the teacher's ``model`` item alone).  The summary is ``workdir/train_summary.json``."""
    return run_training(config, workdir, "distill")


def run_training(config, workdir: str, mode: str) -> dict:
    """The loop of ``--mode=train`` and ``--mode=distill`` (``mode``); returns the summary.

    Before anything is built: the config is validated against the data and devices, and, when
    ``workdir`` holds checkpoints, against the config they were trained with
    (``rundir.check_compatible``).  ``config.json`` is written once the checkpoint restored.
    Raises NonFiniteError (after writing the summary) when ``config.train.max_nonfinite_steps``
    steps in a row were skipped by the non-finite guard.
    """
    C.validate(config)
    _check_family(config, mode)
    if mode == "distill":
        _distill_preflight(config, workdir, ())
    parallel.maybe_initialize_distributed(config)
    mesh = parallel.make_mesh(config.mesh)
    tc = config.train
    source = get_source(config.data, "train")
    # Validate against the data and devices before building: initialising already compiles.
    C.validate(config, num_classes=source.num_classes, example_shape=source.example_shape,
               device_count=mesh.size)
    rundir.check_writable(workdir)
    rundir.check_compatible(workdir, config, "train")
    trainer, state = build_trainer(config, source.num_classes, source.example_shape,
                                   source.kind)
    spec = trainer.spec
    is_main = jax.process_index() == 0

    step_fn, shard = compile_train_step(trainer, state, mesh)
    os.makedirs(workdir, exist_ok=True)
    ckpt = open_checkpoints(workdir, max_to_keep=int(tc.keep_checkpoints),
                            save_interval_steps=int(tc.checkpoint_every) or 10**12)
    start = 0
    if ckpt.latest_step() is not None:
        state = _restore_state(ckpt, state, shard)
        start = int(jax.device_get(state["train"]["step"]))
        if is_main:
            print(f"resumed from {ckpt.directory} at step {start}", flush=True)
    state = place_state(state, shard)
    if is_main:
        rundir.write_config(workdir, config)

    num_steps = int(tc.num_steps)
    sampler = BatchSampler(num_examples=len(source), global_batch_size=int(tc.batch_size),
                           seed=int(config.seed), process_index=jax.process_index(),
                           process_count=jax.process_count())
    batches = None
    if start < num_steps:
        batches = batch_iterator(source, sampler, start_step=start, num_steps=num_steps - start,
                                 random_flip=bool(config.data.random_flip),
                                 num_threads=int(config.data.num_threads),
                                 prefetch_batches=int(config.data.prefetch_batches))
    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(workdir, "tb"))
    bar = None
    if is_main and tc.progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    deadline = time.time() + 60 * float(tc.time_limit_minutes) if tc.time_limit_minutes else None
    step = start
    t_last, step_last, last_metrics = time.time(), start, None
    reason = "finished"
    saved_step = start
    compile_s = None
    guard = _Divergence(int(tc.max_nonfinite_steps))
    with _StopFlag() as stop:
        while step < num_steps:
            x, labels = next(batches)
            batch = parallel.global_batch(dict(x=x, label=labels), mesh)
            t0 = time.time()
            state, metrics = step_fn(state, batch)
            step += 1
            guard.push(step, metrics["nonfinite"])
            if compile_s is None:
                jax.block_until_ready(metrics)
                compile_s = time.time() - t0
            if bar is not None:
                bar.update(1)
            if tc.log_every and (step % tc.log_every == 0 or step == num_steps):
                guard.flush()
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                state["train"]["extra"] = place_state(trainer.objective.host_update(
                    state["train"]["extra"], step, m), shard["train"]["extra"])
                now = time.time()
                rate = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last, last_metrics = now, step, m
                if is_main:
                    line = _log_line(step, num_steps, m, rate, int(tc.batch_size), guard.total)
                    (bar.write if bar is not None else print)(line)
                    for k, v in m.items():
                        if math.isfinite(v):  # a skipped step's NaN loss stays off the board
                            writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/steps_per_s", rate, step)
                    writer.add_scalar("train/images_per_s", rate * int(tc.batch_size), step)
                    writer.add_scalar("train/skipped_nonfinite", guard.total, step)
            if guard.diverged:
                reason = "diverged"
                break
            if ckpt.save(step, state):
                saved_step = step
            if tc.sample_every and step % tc.sample_every == 0 and step < num_steps and is_main:
                write_preview(spec, state["model"], os.path.join(workdir, "samples",
                                                                 f"step_{step:07d}.png"))
            if stop.signal is not None:
                reason = f"signal {stop.signal}"
                break
            if deadline is not None and time.time() > deadline:
                reason = "time limit"
                break
    guard.flush()
    if guard.diverged:
        reason = "diverged"
    if saved_step != step and reason != "diverged":
        ckpt.save(step, state, force=True)
    ckpt.wait_until_finished()
    if bar is not None:
        bar.close()
    grid_path = None
    if is_main and stop.signal is None and reason != "diverged":
        grid_path = write_preview(spec, state["model"],
                                  os.path.join(workdir, "samples", "final.png"))
    summary = dict(step=step, num_steps=num_steps, stopped=reason, last_metrics=last_metrics,
                   skipped_nonfinite_steps=guard.total,
                   first_step_seconds_incl_compile=compile_s, sample_grid=grid_path,
                   devices=jax.device_count(), processes=jax.process_count(),
                   **({"objective": trainer.objective.summary()}
                      if trainer.objective.summary() else {}))
    if is_main:
        write_json(os.path.join(workdir, "train_summary.json"), summary)
        if writer is not None:
            writer.close()
        if reason != "diverged":
            print(f"stopped at step {step} ({reason}); checkpoint in {ckpt.directory}"
                  + (f"; samples in {grid_path}" if grid_path else ""), flush=True)
    latest = ckpt.latest_step()
    ckpt.close()
    if reason == "diverged":
        raise NonFiniteError(guard.message(config, latest))
    return summary


__all__ = ["Trainer", "build_trainer", "compile_train_step", "distill", "learning_rate_schedule",
           "make_optimizer", "make_train_step", "place_state", "preview_params",
           "preview_samples", "run_training", "state_shardings", "train", "write_preview"]
