"""Class-conditional CIFAR-10 with EDM's training and sampling recipe (Karras et al. 2022,
Table 1 / Sec. 5): EDM preconditioning (sigma_data = 0.5), log-normal sigma (P_mean = -1.2,
P_std = 1.2), lambda(sigma) weighting, Heun sampler with 18 steps (35 NFE) on the rho = 7 grid.
The network is jaxdiff's DDPM++-style U-Net (57.4M parameters; EDM's DDPM++ has 56M); a
GPU / TPU recipe.

  tfds build cifar10 --data_dir=$TFDS_DIR --file_format=array_record
  jaxdiff --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm \
      --config.data.tfds_data_dir=$TFDS_DIR
"""
from jaxdiff.config import base_config
from jaxdiff.data import default_data_config
from jaxdiff.models import default_unet_config


def get_config():
    model = default_unet_config()
    model.base_channels = 128
    model.channel_mult = (2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.num_heads = 1
    model.num_groups = 32
    model.dropout = 0.13
    model.noise_scale = 1.0  # EDM's c_noise = log(sigma)/4 is already O(1)
    model.dtype = "bfloat16"
    config = base_config(default_data_config("cifar10"), model)
    config.data.num_threads = 4          # grain reader threads, batches prefetched ahead
    config.diffusion.schedule = "edm"
    config.diffusion.schedule_kwargs.sigma_min = 0.002
    config.diffusion.schedule_kwargs.sigma_max = 80.0
    config.diffusion.parameterization = "edm"
    config.diffusion.sigma_data = 0.5
    config.diffusion.weighting = "edm"
    config.diffusion.time_sampler = "lognormal"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 10_000
    config.optim.lr_schedule = "constant"
    config.optim.b2 = 0.999
    config.optim.grad_clip = 0.0
    config.train.num_steps = 400_000
    config.train.batch_size = 512
    config.train.ema_decays = (0.9993,)
    config.train.log_every = 100
    config.train.sample_every = 10_000
    config.train.checkpoint_every = 5_000
    config.train.progress_bar = False
    config.sample.sampler = "heun"
    config.sample.grid = "karras"
    config.sample.steps = 18
    config.guidance.scale = 1.3
    return config
