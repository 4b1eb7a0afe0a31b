"""Shared tiny config and step-0 checkpoint for the sampling-job tests."""
import configs.digits as digits
from jaxdiff.data import get_source
from jaxdiff.jobs.spec import open_checkpoints
from jaxdiff.jobs.train import build_trainer


def tiny_config():
    cfg = digits.get_config()
    cfg.model.base_channels = 8
    cfg.model.channel_mult = (1,)
    cfg.model.attn_resolutions = ()
    cfg.model.num_groups = 4
    cfg.train.progress_bar = False
    cfg.sample.sampler = "ddpm"       # stochastic: exercises per-example step noise too
    cfg.sample.steps = 4
    cfg.guidance.scale = 2.0
    return cfg


def tiny_checkpoint(wd: str, seed: int) -> str:
    """Writes a step-0 checkpoint of the tiny model into ``wd`` (its EMA perturbed by a
    seed-dependent constant so it is not zero, and two seeds give two models)."""
    import jax

    cfg = tiny_config()
    src = get_source(cfg.data, "train")
    _, state = build_trainer(cfg, src.num_classes, src.example_shape)
    noise = jax.random.normal(jax.random.key(seed), ())
    state["model"]["ema"] = tuple(
        jax.tree.map(lambda p: p + 0.05 * noise * jax.numpy.ones_like(p), e)
        for e in state["model"]["ema"])
    ckpt = open_checkpoints(wd, async_save=False)
    ckpt.save(0, state, force=True)
    ckpt.close()
    return wd
