"""DeeDiff early exit (Tang et al. 2023) at full scale: class-conditional CIFAR-10 with a
DiT-S/2 (hidden 384, 12 blocks, 6 heads, patch 2; the paper's backbone is the comparable U-ViT)
carrying an exit head and an uncertainty head after each of its first 11 blocks, trained with the
DeeDiff loss; sampled with DPM-Solver++(2M), CFG, and the exit rule at
``sample.exit_threshold`` (0: the full network).  Sized for one accelerator host.

Prepare the data once as for configs/cifar10_unet.py (tfds build cifar10 ...), then

  jaxdiff --config=configs/cifar10_deediff.py --workdir=runs/cifar10_deediff \
      --config.data.tfds_data_dir=$TFDS_DIR
  jaxdiff --config=configs/cifar10_deediff.py --workdir=... --mode=sample,eval \
      --config.sample.exit_threshold=0.1
"""
from jaxdiff.config import base_config
from jaxdiff.data import default_data_config
from jaxdiff.models import default_dit_config
from jaxdiff.objectives import objective_config


def get_config():
    model = default_dit_config()
    model.patch_size = 2
    model.hidden_size = 384
    model.depth = 12
    model.num_heads = 6
    model.mlp_ratio = 4.0
    model.dtype = "bfloat16"
    model.exit_heads = True
    config = base_config(default_data_config("cifar10"), model)
    config.data.num_threads = 4          # grain reader threads, batches prefetched ahead
    config.objective = objective_config("deediff", uncertainty_weight=1.0, layer_weight=1.0)
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.parameterization = "eps"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5_000
    config.optim.lr_schedule = "constant"
    config.train.num_steps = 500_000
    config.train.batch_size = 256
    config.train.ema_decays = (0.9999,)
    config.train.log_every = 100
    config.train.sample_every = 20_000
    config.train.checkpoint_every = 5_000
    config.train.progress_bar = False
    config.sample.sampler = "dpmpp_2m"
    config.sample.grid = "uniform_logsnr"
    config.sample.steps = 25
    config.sample.num_samples = 50_000
    config.guidance.scale = 1.5
    return config
