"""Guided distillation (Meng et al., CVPR 2023) at the paper's pixel-space scale: the
class-conditional CIFAR-10 U-Net of configs/cifar10_unet.py (cosine schedule, v-prediction,
CFG dropout 0.1, as the paper's pixel models) is distilled into one network taking the guidance
weight w ~ U[0, 4] (CFG scale s in [1, 5]), then halved from 1024 DDIM steps to 1 by progressive
distillation (ten rounds).  A GPU / TPU recipe; the update counts per round follow Salimans &
Ho's CIFAR-10 setup (to verify against the paper's appendix).

  jaxdiff --config=configs/cifar10_unet.py --workdir=runs/cifar10_unet \
      --config.data.tfds_data_dir=$TFDS_DIR                                        # teacher
  jaxdiff --config=configs/cifar10_distill.py:guided --workdir=runs/cifar10_guided \
      --mode=distill --config.data.tfds_data_dir=$TFDS_DIR                          # stage one
  jaxdiff --config=configs/cifar10_distill.py:progressive --workdir=runs/cifar10_progressive \
      --mode=distill --config.data.tfds_data_dir=$TFDS_DIR                          # stage two
  jaxdiff --config=configs/cifar10_distill.py:progressive --workdir=runs/cifar10_progressive \
      --mode=sample,eval --config.sample.checkpoint_step=400000 --config.sample.steps=4 \
      --config.data.tfds_data_dir=$TFDS_DIR                                         # 4 steps
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config
from jaxdiff.objectives import objective_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROUNDS = 10                # 1024 -> 512 -> ... -> 1
STEPS_PER_ROUND = 50_000


def get_config(stage: str = "guided"):
    """'guided': stage one from the teacher; 'progressive': stage two from stage one."""
    config = load_config_file(os.path.join(HERE, "cifar10_unet.py"))
    config.model.guidance_embedding = True
    config.guidance = guidance_config("distilled", scale=1.5)
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 1000
    config.train.sample_every = 0
    if stage == "guided":
        config.distill.teacher_workdir = os.path.join("runs", "cifar10_unet")
        config.objective = objective_config("guided_distill", scale_min=1.0, scale_max=5.0)
        config.train.num_steps = 100_000
        return config
    if stage != "progressive":
        raise ValueError(f"configs/cifar10_distill.py: choose ':guided' or ':progressive', got "
                         f"{stage!r}")
    config.distill.teacher_workdir = os.path.join("runs", "cifar10_guided")
    config.objective = objective_config("progressive_distill", teacher_steps=1024,
                                        rounds=ROUNDS, steps_per_round=STEPS_PER_ROUND,
                                        scale_min=1.0, scale_max=5.0)
    config.train.num_steps = ROUNDS * STEPS_PER_ROUND
    config.train.checkpoint_every = 5_000
    config.train.keep_checkpoints = ROUNDS * STEPS_PER_ROUND // 5_000
    config.sample.sampler = "ddim"
    config.sample.grid = "uniform_t_to_zero"
    config.sample.steps = 1
    config.sample.num_samples = 50_000
    config.sample.shard_size = 1000
    return config
