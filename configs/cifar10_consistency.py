"""Consistency models (Song et al., ICML 2023) on CIFAR-10 at the paper's scale: consistency
distillation (``:cd``, default) from the EDM model of configs/cifar10_edm.py (N = 18 Karras
points, target EMA 0.95, Heun teacher steps; the student starts from the teacher), or
consistency training (``:ct``) from scratch with N growing from 2 to 150 and the target decay
from 0.9.  Sampled in 1 or 2 evaluations by multistep consistency sampling.  Batch, learning
rate and iteration counts follow the paper's CIFAR-10 setup (to verify against its Table 3);
the distance is squared L2 (the paper's best CD used LPIPS, which jaxdiff does not ship).

  jaxdiff --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm \
      --config.data.tfds_data_dir=$TFDS_DIR                                          # teacher
  jaxdiff --config=configs/cifar10_consistency.py --workdir=runs/cifar10_cd --mode=distill \
      --config.data.tfds_data_dir=$TFDS_DIR                                          # CD
  jaxdiff --config=configs/cifar10_consistency.py:ct --workdir=runs/cifar10_ct --mode=train \
      --config.data.tfds_data_dir=$TFDS_DIR                                          # CT
  jaxdiff --config=configs/cifar10_consistency.py --workdir=runs/cifar10_cd --mode=sample,eval \
      --config.sample.steps=2 --config.data.tfds_data_dir=$TFDS_DIR                  # 2 steps
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config
from jaxdiff.objectives import objective_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(method: str = "cd"):
    config = load_config_file(os.path.join(HERE, "cifar10_edm.py"))
    config.optim.lr = 4e-4
    config.optim.warmup_steps = 0
    config.train.num_steps = 800_000
    config.train.batch_size = 512
    config.train.ema_decays = (0.9999,)
    config.guidance = guidance_config("consistency")
    config.sample.sampler = "consistency"
    config.sample.grid = "uniform_t_to_zero"
    config.sample.steps = 1
    config.sample.num_samples = 50_000
    config.sample.shard_size = 1000
    if method == "cd":
        config.distill.teacher_workdir = os.path.join("runs", "cifar10_edm")
        config.objective = objective_config("consistency_distill", num_points=18, decay=0.95)
        return config
    if method != "ct":
        raise ValueError(f"configs/cifar10_consistency.py: choose ':cd' or ':ct', got "
                         f"{method!r}")
    config.objective = objective_config("consistency_training", s0=2.0, s1=150.0, decay=0.9)
    return config
