"""Tiny class-conditional model on scikit-learn's embedded 8x8 digits (~1 minute on a CPU).

  jaxdiff --config=configs/digits.py --workdir=runs/digits --mode=train
"""
from jaxdiff.config import base_config
from jaxdiff.data import default_data_config
from jaxdiff.models import default_unet_config


def get_config():
    model = default_unet_config()
    model.base_channels = 32
    model.channel_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()
    config = base_config(default_data_config("digits"), model)
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.parameterization = "eps"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 20
    config.train.num_steps = 300
    config.train.batch_size = 64
    config.train.ema_decays = (0.99,)
    config.train.log_every = 50
    config.train.checkpoint_every = 100
    config.sample.sampler = "ddim"
    config.sample.grid = "uniform_t"
    config.sample.steps = 50
    config.guidance.scale = 2.0
    return config
