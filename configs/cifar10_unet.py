"""Class-conditional CIFAR-10 with a DDPM++-style U-Net (Song et al. 2021, Table 3 sizes scaled
to the ADM layout of Dhariwal & Nichol 2021): VP cosine schedule, v-prediction, CFG dropout 0.1.
A GPU / TPU recipe (38.3M parameters).

Prepare the data once (needs the optional TensorFlow extra):
  tfds build cifar10 --data_dir=$TFDS_DIR --file_format=array_record
  jaxdiff --config=configs/cifar10_unet.py --workdir=runs/cifar10_unet \
      --config.data.tfds_data_dir=$TFDS_DIR
"""
from jaxdiff.config import base_config
from jaxdiff.data import default_data_config
from jaxdiff.models import default_unet_config


def get_config():
    model = default_unet_config()
    model.base_channels = 128
    model.channel_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.num_heads = 4
    model.num_groups = 32
    model.dropout = 0.1
    model.dtype = "bfloat16"
    config = base_config(default_data_config("cifar10"), model)
    config.data.num_threads = 4          # grain reader threads, batches prefetched ahead
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.parameterization = "v"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.lr_schedule = "constant"
    config.optim.grad_clip = 1.0
    config.train.num_steps = 400_000
    config.train.batch_size = 128
    config.train.ema_decays = (0.9999, 0.99995)
    config.train.log_every = 100
    config.train.sample_every = 10_000
    config.train.checkpoint_every = 5_000
    config.train.progress_bar = False
    config.sample.sampler = "dpmpp_2m"
    config.sample.grid = "uniform_logsnr"
    config.sample.steps = 35
    config.guidance.scale = 1.5
    return config
