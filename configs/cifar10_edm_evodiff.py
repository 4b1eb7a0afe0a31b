"""EVODiff (Li et al., NeurIPS 2025) at the paper's protocol: the model of configs/cifar10_edm.py
(EDM preconditioning on CIFAR-10) sampled by EVODiff at 10 NFE on EDM's rho = 7 grid (sigma 80
-> 0.002), 50,000 class-balanced samples scored by the evaluation job's Inception FID; the
paper's comparison is DPM-Solver++ at the same NFE (FID 5.10 -> 2.78 on its unconditional EDM
model; set --config.guidance.scale=1.0 for the conditional model alone).

  jaxdiff --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm \
      --config.data.tfds_data_dir=$TFDS_DIR                                  # train
  jaxdiff --config=configs/cifar10_edm_evodiff.py --workdir=runs/cifar10_edm --mode=sample,eval \
      --config.data.tfds_data_dir=$TFDS_DIR
  jaxdiff --config=configs/cifar10_edm_evodiff.py --workdir=runs/cifar10_edm --mode=sample,eval \
      --config.sample.sampler=dpmpp_2m --config.data.tfds_data_dir=$TFDS_DIR   # the baseline
"""
import os

from jaxdiff.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = load_config_file(os.path.join(HERE, "cifar10_edm.py"))
    config.sample.sampler = "evodiff"
    config.sample.grid = "karras"
    config.sample.steps = 10             # 1 NFE per step: 10 NFE, one network call each
    config.guidance.scale = 1.0          # the paper samples without guidance
    config.sample.num_samples = 50_000
    config.sample.shard_size = 1000
    return config
