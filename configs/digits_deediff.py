"""DeeDiff early exit (Tang et al. 2023) on scikit-learn's embedded 8x8 digits: a small DiT
(patch 2, 16 tokens, hidden 128, 8 blocks) with an exit head and an uncertainty head after each
of its first 7 blocks, trained with the DeeDiff loss (``objective.name='deediff'``: denoising
loss + uncertainty loss + uncertainty-aware layer-wise loss).  Sampling exits each example at
its first block whose uncertainty is below ``sample.exit_threshold`` (0: the full network).

  jaxdiff --config=configs/digits_deediff.py --workdir=runs/digits_deediff --mode=train
  jaxdiff --config=configs/digits_deediff.py --workdir=runs/digits_deediff --mode=sample,eval \
      --config.sample.exit_threshold=0.1
  jaxdiff reproduce deediff_digits        # trains it, then FD / speed per threshold
"""
from jaxdiff.config import base_config
from jaxdiff.data import default_data_config
from jaxdiff.models import default_dit_config
from jaxdiff.objectives import objective_config


def get_config():
    model = default_dit_config()
    model.patch_size = 2
    model.hidden_size = 128
    model.depth = 8
    model.num_heads = 4
    model.mlp_ratio = 4.0
    model.exit_heads = True
    config = base_config(default_data_config("digits"), model)
    config.objective = objective_config("deediff", uncertainty_weight=1.0, layer_weight=1.0)
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.parameterization = "eps"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 100
    config.train.num_steps = 3000
    config.train.batch_size = 64
    config.train.ema_decays = (0.999,)
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    config.sample.sampler = "ddim"
    config.sample.grid = "uniform_t"
    config.sample.steps = 25
    config.guidance.scale = 2.0
    return config
