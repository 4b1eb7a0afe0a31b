"""``--mode=train_guidance``: trains the bank of time-range classifier experts that PPAP guides
with (Go et al., CVPR 2023; ``jaxdiff.guidance.ppap``), resuming after a kill.

Each of N experts is the off-the-shelf clean classifier (``guidance_train.classifier_dir``;
default: the dataset's own feature network) plus a LoRA adapter (``jaxdiff.models.lora``; rank
0: the whole classifier is fine-tuned), responsible for one time range [b_k, b_{k+1}).  Every
step trains all experts at once, each on its own ``batch_size`` examples noised at t ~ U(its
range): x_t = alpha(t) x0 + sigma(t) eps.  Two targets:

  distill  data-free knowledge transfer (PPAP Sec. 4.2): x0 are the run's own model's samples
           (the pool: ``pool_size`` samples of the model in WORKDIR at the null condition,
           generated once and kept in chunks), the loss is
           KL(softmax(f(x0) / tau) || softmax(f_k(x_t))), tau = 0.25 (the paper's teacher
           temperature); no label is read.
  labels   the training split with its labels, softmax cross-entropy: noise-aware classifiers
           trained with labels (the reference PPAP compares with; rank 0 and one expert is
           Dhariwal & Nichol's noisy classifier without a time input).

AdamW (lr 1e-4, weight decay 0.05: the paper's).  Batches are a function of (seed, step), the
noise of fold_in(seed, step), so a run killed and rerun with the same command continues from its
newest checkpoint to the same experts.  Output, in ``out_dir`` (default
``WORKDIR/guidance_experts``): ``experts.npz`` + ``experts.json`` (boundaries, LoRA, the base
classifier's SHA-256, training settings, and each expert's held-out accuracy on noisy images at
its range's middle next to the base classifier's), which ``--config.guidance.name=ppap
--config.guidance.experts_dir=...`` reads.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff import config as C
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.data import BatchSampler, dataset_name, get_source
from jaxdiff.errors import ConfigError
from jaxdiff.jobs.spec import needs_checkpoint, register_job, restore_model, spec_for_data
from jaxdiff.models.lora import num_params
from jaxdiff.schedules import diffuse

TARGETS = ("distill", "labels")


def default_guidance_train_config() -> ml_collections.ConfigDict:
    """``--mode=train_guidance``: PPAP's recipe (Go et al. Sec. 5) where the paper gives one."""
    return ml_collections.ConfigDict(dict(
        target="distill",          # 'distill' (data-free, the model's samples) | 'labels'
        num_experts=5,             # N time ranges
        boundaries=(),             # N + 1 increasing times covering [t_min, t_max]; () = equal
        lora_rank=16,              # 0: fine-tune the whole classifier
        lora_alpha=8.0,
        lora_exclude=("head",),    # path components left as they are (the classification layer)
        temperature=0.25,          # tau of the teacher's softmax (distill)
        steps=1000,                # optimizer steps (each trains every expert)
        batch_size=64,             # examples per expert per step
        lr=1e-4, weight_decay=0.05,
        pool_size=2000,            # distill: model samples to train on
        pool_sampler="ddim", pool_steps=20, pool_batch=250,
        pool_dir="",               # where the pool's chunks are kept; '' = OUT/pool
        classifier_dir="",         # the base classifier; '' = the dataset's own feature network
        out_dir="",                # '' = WORKDIR/guidance_experts
        checkpoint_every=200,
        eval_images=500,           # held-out images for each expert's noisy accuracy
        seed=0))


def _check(g, config, **_) -> None:
    C.choice(g.target, "guidance_train.target", TARGETS)
    for field in ("num_experts", "steps", "batch_size", "pool_size", "pool_steps",
                  "pool_batch", "checkpoint_every", "eval_images"):
        C.number(g[field], f"guidance_train.{field}", low=1, integer=True)
    C.number(g.lora_rank, "guidance_train.lora_rank", low=0, integer=True)
    C.number(g.seed, "guidance_train.seed", low=0, integer=True)
    C.number(g.lora_alpha, "guidance_train.lora_alpha", low=0.0)
    C.number(g.temperature, "guidance_train.temperature", low=0.0, low_open=True)
    C.number(g.lr, "guidance_train.lr", low=0.0, low_open=True)
    C.number(g.weight_decay, "guidance_train.weight_decay", low=0.0)
    if g.boundaries and len(g.boundaries) != g.num_experts + 1:
        raise ConfigError(f"config.guidance_train.boundaries: {len(g.boundaries)} values for "
                          f"{g.num_experts} experts; give num_experts + 1, or () for equal "
                          f"ranges")
    for field in ("classifier_dir", "out_dir", "pool_dir"):
        C.path_string(g[field], f"guidance_train.{field}")


C.register_section("guidance_train", defaults=default_guidance_train_config, check=_check)


def boundaries_of(g, schedule) -> tuple[float, ...]:
    from jaxdiff.guidance.ppap import check_boundaries, default_boundaries

    b = tuple(g.boundaries) or default_boundaries(g.num_experts, schedule.t_min, schedule.t_max)
    try:
        return check_boundaries(b, float(schedule.t_min), float(schedule.t_max))
    except ValueError as e:
        raise ConfigError(f"config.guidance_train.{e}") from None


def _out_dir(config, workdir: str) -> str:
    return config.guidance_train.out_dir or os.path.join(workdir, "guidance_experts")


# ------------------------------------------------------------------------------------------------
# the pool of the model's own samples (distill)
# ------------------------------------------------------------------------------------------------

def model_pool(config, workdir: str, out: str) -> tuple[np.ndarray, int]:
    """(pool (pool_size, ...) float32 in [-1, 1], checkpoint step): samples of the run's model
    at the null condition, generated in chunks of ``pool_batch`` that are kept in
    ``guidance_train.pool_dir`` (default ``out/pool``; a killed run regenerates only the missing
    chunks, and banks trained from one model can share a pool).  Chunk i uses the key
    fold_in(key(seed + 1), i)."""
    from jaxdiff import samplers

    g = config.guidance_train
    spec, _ = spec_for_data(config, "train")
    params, step = restore_model(spec, workdir)
    den = spec.sampling_denoiser(params, stitch=False)
    pool_dir = g.pool_dir or os.path.join(out, "pool")
    os.makedirs(pool_dir, exist_ok=True)
    n, b = int(g.pool_size), int(g.pool_batch)
    chunks = []
    from tqdm import tqdm
    for i in tqdm(range(-(-n // b)), desc="sample pool", unit="chunk", dynamic_ncols=True):
        path = os.path.join(pool_dir, f"step{step}_seed{g.seed}_b{b}_{i:04d}.npy")
        if not os.path.isfile(path):
            cond = (jnp.full((b,), spec.null, jnp.int32) if spec.num_classes > 0 else None)
            outs = samplers.sample(den, jax.random.fold_in(jax.random.key(int(g.seed) + 1), i),
                                   (b, *spec.example_shape), sampler=g.pool_sampler,
                                   steps=int(g.pool_steps), grid=config.sample.grid, cond=cond)
            x = np.clip(np.asarray(outs.x0, np.float32), -1.0, 1.0)
            tmp = path + ".tmp.npy"
            np.save(tmp, x)
            os.replace(tmp, path)
        chunks.append(np.load(path))
    return np.concatenate(chunks)[:n], step


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------

def expert_losses(bank, base, experts, x0, t, eps, target, schedule, *, distill: bool,
                  temperature: float):
    """(N,) mean loss of each expert on its own examples.

    experts: stacked (N, ...); x0, eps: (N, b, ...); t: (N, b); target: (N, b) labels, or for
    ``distill`` unused (the teacher is the base classifier on x0).  The experts run one after
    another in the program (not vmapped: a convolution vmapped over its kernel becomes a grouped
    convolution, many times slower on CPU).
    """
    params = dict(base=base, experts=experts)

    def one(k, x0_k, t_k, eps_k, y_k):
        x_t = diffuse(schedule, x0_k, t_k, eps_k)
        logp = jax.nn.log_softmax(bank.expert_logits(params, k, x_t).astype(jnp.float32))
        if distill:
            teacher = jax.lax.stop_gradient(
                bank.logits_fn(base, x0_k).astype(jnp.float32) / temperature)
            p = jax.nn.softmax(teacher)
            kl = jnp.sum(p * (jax.nn.log_softmax(teacher) - logp), axis=-1)
            return kl.mean()
        return -jnp.take_along_axis(logp, y_k[:, None], axis=1).mean()

    return jnp.stack([one(k, x0[k], t[k], eps[k], target[k]) for k in range(x0.shape[0])])


def sample_times(key, boundaries, t_min: float, t_max: float, per_expert: int):
    """(N, b) times, row k uniform on expert k's range clipped to [t_min, t_max]."""
    b = np.asarray(boundaries, np.float32)
    lo = np.clip(b[:-1], t_min, t_max)[:, None]
    hi = np.clip(b[1:], t_min, t_max)[:, None]
    u = jax.random.uniform(key, (len(b) - 1, per_expert))
    return jnp.asarray(lo) + u * jnp.asarray(hi - lo)


def _preflight(config, workdir: str, earlier) -> None:
    if config.guidance_train.target == "distill":
        needs_checkpoint(config, workdir, earlier)


@register_job("train_guidance", preflight=_preflight)
def train_guidance(config, workdir: str) -> dict:
    """Trains (or resumes) the expert bank; returns the manifest (``out_dir/experts.json``)."""
    from jaxdiff.classifier_train import classifier_directory, load_classifier_weights
    from jaxdiff.guidance.ppap import ExpertBank, bank_lora, save_experts

    C.validate(config)
    g = config.guidance_train
    distill = g.target == "distill"
    spec, heldout = spec_for_data(config, "heldout")
    schedule = spec.schedule
    boundaries = boundaries_of(g, schedule)
    n_exp = len(boundaries) - 1
    out = _out_dir(config, workdir)
    base = load_classifier_weights(classifier_directory(g.classifier_dir, config))
    if base.num_classes != heldout.num_classes:
        raise ConfigError(f"config.guidance_train.classifier_dir: the classifier has "
                          f"{base.num_classes} classes, {dataset_name(config.data)} has "
                          f"{heldout.num_classes}")
    lora_cfg = dict(rank=int(g.lora_rank), alpha=float(g.lora_alpha),
                    exclude=list(g.lora_exclude))
    try:
        lora = bank_lora(base.params, lora_cfg)
    except ValueError as e:
        raise ConfigError(f"config.guidance_train.lora_rank: {e}") from None
    bank = ExpertBank(base.logits_fn, lora, boundaries)

    os.makedirs(out, exist_ok=True)
    if distill:
        images, model_step = model_pool(config, workdir, out)
        labels = np.zeros((len(images),), np.int32)
    else:
        train_src = get_source(config.data, "train")
        images, labels = train_src.get(np.arange(len(train_src)))
        images, labels, model_step = np.asarray(images, np.float32), labels.astype(np.int32), None

    key = jax.random.key(int(g.seed))
    if lora is None:  # full fine-tuning: every expert starts as a copy of the classifier
        experts = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float32),
                                                          (n_exp,) + a.shape), base.params)
    else:  # every expert its own random A (B = 0: each starts as the base)
        experts = jax.vmap(lambda k: lora.init(base.params, k))(
            jax.random.split(jax.random.fold_in(key, 10**6), n_exp))
    optimizer = optax.adamw(float(g.lr), weight_decay=float(g.weight_decay))
    state = dict(experts=experts, opt_state=optimizer.init(experts),
                 step=jnp.zeros((), jnp.int32))

    ckpt = Checkpointer(os.path.join(out, "checkpoints"), max_to_keep=2,
                        save_interval_steps=int(g.checkpoint_every), require_finite=True)
    start = 0
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(target=jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state))
        start = int(state["step"])
        print(f"resumed from {ckpt.directory} at step {start}", flush=True)

    t_min, t_max = float(schedule.t_min), float(schedule.t_max)
    b = int(g.batch_size)
    tau = float(g.temperature)

    @jax.jit
    def train_step(state, x0, y, step):
        k = jax.random.fold_in(key, step)
        t = sample_times(jax.random.fold_in(k, 0), boundaries, t_min, t_max, b)
        eps = jax.random.normal(jax.random.fold_in(k, 1), x0.shape, jnp.float32)

        def loss_fn(experts):
            losses = expert_losses(bank, base.params, experts, x0, t, eps, y, schedule,
                                   distill=distill, temperature=tau)
            return losses.sum(), losses

        (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["experts"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["experts"])
        return dict(experts=optax.apply_updates(state["experts"], updates),
                    opt_state=opt_state, step=state["step"] + 1), losses

    sampler = BatchSampler(len(images), min(n_exp * b, len(images)), int(g.seed),
                           drop_remainder=False)
    steps = int(g.steps)
    from tqdm import tqdm
    bar = tqdm(total=steps, initial=start, desc="train guidance experts", unit="step",
               dynamic_ncols=True)
    losses = None
    t0 = time.time()
    for step in range(start, steps):
        idx = sampler.indices_for_step(step)
        if idx.size < n_exp * b:  # a pool smaller than one step's batch: repeat it
            idx = np.resize(idx, n_exp * b)
        x0 = images[idx].reshape((n_exp, b) + images.shape[1:])
        y = labels[idx].reshape((n_exp, b))
        state, losses = train_step(state, jnp.asarray(x0), jnp.asarray(y), step)
        bar.update(1)
        if (step + 1) % int(g.checkpoint_every) == 0 or step + 1 == steps:
            bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in np.asarray(losses)))
        ckpt.save(step + 1, state, force=step + 1 == steps)
    bar.close()
    ckpt.wait_until_finished()
    ckpt.close()

    accuracy = noisy_accuracy(bank, base.params, state["experts"], heldout, boundaries,
                              schedule, int(g.eval_images), int(g.seed))
    manifest = dict(
        method="ppap", target=g.target, boundaries=list(boundaries), lora=lora_cfg,
        num_experts=n_exp, classifier_dir=g.classifier_dir, classifier_name=base.manifest["name"],
        classifier_sha256=base.checksum, dataset=dataset_name(config.data),
        diffusion_workdir=os.path.abspath(workdir) if distill else None,
        diffusion_checkpoint_step=model_step,
        training=dict(steps=steps, batch_size=b, lr=float(g.lr),
                      weight_decay=float(g.weight_decay), temperature=tau, seed=int(g.seed),
                      pool_size=int(g.pool_size) if distill else None,
                      pool_sampler=g.pool_sampler if distill else None,
                      pool_steps=int(g.pool_steps) if distill else None),
        trainable_params_per_expert=num_params(state["experts"]) // n_exp,
        classifier_params=num_params(base.params),
        final_losses=None if losses is None else [float(v) for v in np.asarray(losses)],
        noisy_heldout_accuracy=accuracy,
        seconds=round(time.time() - t0, 1))
    path = save_experts(out, state["experts"], manifest)
    print(f"{n_exp} guidance expert(s) in {out}; held-out accuracy on noisy images at each "
          f"range's middle t: experts {accuracy['experts']} / base classifier "
          f"{accuracy['base']}", flush=True)
    manifest["path"] = path
    return manifest


def noisy_accuracy(bank, base, experts, heldout, boundaries, schedule, num_images: int,
                   seed: int) -> dict:
    """Accuracy on ``num_images`` held-out images noised at each range's middle t (the same
    noise for the expert and the base classifier): dict(t, experts, base), lists of length N."""
    from jaxdiff.jobs.classify import heldout_subset

    idx = heldout_subset(num_images, len(heldout))
    images, labels = heldout.get(idx)
    images = jnp.asarray(images, jnp.float32)
    out = dict(t=[], experts=[], base=[])

    params = dict(base=base, experts=experts)

    @jax.jit
    def both(k, x_t):
        return (bank.expert_logits(params, k, x_t).argmax(-1),
                bank.logits_fn(base, x_t).argmax(-1))

    for k in range(len(boundaries) - 1):
        t = 0.5 * (max(boundaries[k], schedule.t_min) + min(boundaries[k + 1], schedule.t_max))
        eps = jax.random.normal(jax.random.fold_in(jax.random.key(seed + 2), k), images.shape)
        e, bs = both(k, diffuse(schedule, images, t, eps))
        out["t"].append(round(float(t), 4))
        out["experts"].append(round(float(np.mean(np.asarray(e) == labels)), 4))
        out["base"].append(round(float(np.mean(np.asarray(bs) == labels)), 4))
    return out


__all__ = ["TARGETS", "default_guidance_train_config",
           "expert_losses", "model_pool", "noisy_accuracy", "sample_times", "train_guidance"]
