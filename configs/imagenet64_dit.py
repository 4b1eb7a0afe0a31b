"""Class-conditional ImageNet 64x64 with a DiT-B/2 (Peebles & Xie 2023: hidden 768, depth 12,
12 heads, patch 2), VP cosine schedule, eps-prediction, CFG dropout 0.1, bfloat16 compute,
130.3M parameters; FSDP-ready (set --config.mesh.fsdp=N --config.mesh.param_rule=fsdp on a pod).

TFDS's downsampled_imagenet carries no labels; for class-conditional training point
``data.tfds_name`` at a labelled 64x64 ImageNet build, e.g. one prepared from imagenet2012 with
``data.image_size=64`` (centre crop + resize), and set ``data.label_key='label'``.

  jaxdiff --config=configs/imagenet64_dit.py --workdir=gs://BUCKET/runs/in64_dit \
      --config.data.tfds_data_dir=$TFDS_DIR
"""
from jaxdiff.config import base_config
from jaxdiff.data import default_data_config
from jaxdiff.models import default_dit_config


def get_config():
    model = default_dit_config()
    model.patch_size = 2
    model.hidden_size = 768
    model.depth = 12
    model.num_heads = 12
    model.mlp_ratio = 4.0
    model.dtype = "bfloat16"
    data = default_data_config("tfds")
    data.tfds_name = "imagenet2012"
    data.train_split = "train"
    data.heldout_split = "validation"
    data.image_size = 64
    data.label_key = "label"
    data.random_flip = True
    data.num_threads = 8                 # grain reader threads, batches prefetched ahead
    config = base_config(data, model)
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.parameterization = "eps"
    config.diffusion.weighting = "native"
    config.diffusion.p_uncond = 0.1
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 10_000
    config.optim.lr_schedule = "constant"
    config.optim.weight_decay = 0.0
    config.train.num_steps = 800_000
    config.train.batch_size = 1024
    config.train.ema_decays = (0.9999,)
    config.train.log_every = 100
    config.train.sample_every = 20_000
    config.train.checkpoint_every = 5_000
    config.train.progress_bar = False
    config.sample.sampler = "dpmpp_2m"
    config.sample.grid = "uniform_logsnr"
    config.sample.steps = 50
    config.guidance.scale = 1.5
    return config
