"""CFG++ (Chung et al., arXiv 2406.08070) at full scale: the DiT-B/2 of configs/imagenet64_dit.py
sampled by DDIM (eta = 0, 50 steps on the uniform-t grid, as the paper's DDIM sampler) with
CFG++ at lambda = 0.6; compare with --config.guidance.name=cfg --config.guidance.scale=S.

  jaxdiff --config=configs/imagenet64_dit.py --workdir=gs://BUCKET/runs/in64_dit \
      --config.data.tfds_data_dir=$TFDS_DIR                                    # train
  jaxdiff --config=configs/imagenet64_cfgpp.py --workdir=gs://BUCKET/runs/in64_dit \
      --mode=sample,eval --config.data.tfds_data_dir=$TFDS_DIR
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = load_config_file(os.path.join(HERE, "imagenet64_dit.py"))
    config.sample.sampler = "ddim"
    config.sample.grid = "uniform_t"
    config.sample.steps = 50
    config.sample.num_samples = 50_000
    config.sample.shard_size = 1000
    config.guidance = guidance_config("cfgpp", scale=0.6)
    return config
