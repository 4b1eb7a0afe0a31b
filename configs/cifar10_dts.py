"""Diffusion Tree Sampling (Jain et al., arXiv 2506.20701) at full scale: the class-conditional
CIFAR-10 U-Net of configs/cifar10_unet.py sampled without guidance by DDPM steps (eta = 1, 50
steps: the paper's DDIM with eta = 1), every sample drawn from its own tree (nodes every 10
steps, the paper's widening 2 N^0.8, lambda = 1) scored by the evaluation's feature network's
log p(c | x0); ``:dts_star`` is Diffusion Tree Search (UCT, max backup, the best leaf).  The
paper's reward is a ResNet-18 of about 85% accuracy and its budgets reach 10^6 NFE; the rollouts
here (64 per sample, up to 3,200 NFE) are a starting point to verify on an accelerator.

  jaxdiff --config=configs/cifar10_unet.py --workdir=gs://BUCKET/runs/cifar10_unet \
      --config.data.tfds_data_dir=$TFDS_DIR                                    # train
  jaxdiff --config=configs/cifar10_dts.py --workdir=gs://BUCKET/runs/cifar10_unet \
      --mode=sample,eval --config.data.tfds_data_dir=$TFDS_DIR
  jaxdiff --config=configs/cifar10_dts.py:dts_star --workdir=gs://BUCKET/runs/cifar10_unet \
      --mode=sample,eval --config.data.tfds_data_dir=$TFDS_DIR
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config
from jaxdiff.search.config import search_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(search: str = "dts"):
    if search not in ("dts", "dts_star"):
        raise ValueError(f"configs/cifar10_dts.py: choose ':dts' or ':dts_star', got {search!r}")
    config = load_config_file(os.path.join(HERE, "cifar10_unet.py"))
    config.guidance = guidance_config("none")
    config.sample.update(dict(sampler="ddpm", steps=50, grid="uniform_t", num_samples=10_000,
                              shard_size=500))
    config.search = search_config(search, rollouts=64, branch_every=10, widening=2.0,
                                  alpha=0.8)
    return config
