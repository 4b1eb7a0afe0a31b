"""Shared tiny config for the sampling-job tests."""
import configs.digits as digits


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
