"""Guided distillation (Meng et al., CVPR 2023) of the README's MNIST-5k model on a CPU: stage
one gives one network that takes the guidance scale as input (one call per step where CFG needs
two), stage two halves its DDIM steps per round by progressive distillation (Salimans & Ho
2022): 16 -> 8 -> 4 -> 2 -> 1.

  # the teacher: the README's main job
  jaxdiff --config=configs/mnist5k.py --workdir=runs/mnist5k --mode=train
  # stage one, then stage two from its student
  jaxdiff --config=configs/mnist5k_distill.py:guided --workdir=runs/mnist5k_guided --mode=distill
  jaxdiff --config=configs/mnist5k_distill.py:progressive --workdir=runs/mnist5k_progressive \
      --mode=distill
  # round r's student (train_summary.json lists them): steps 8, 4, 2, 1 at checkpoints
  # 300, 600, 900, 1200; sample the 1-step one at CFG scale 2 and evaluate it
  jaxdiff --config=configs/mnist5k_distill.py:progressive --workdir=runs/mnist5k_progressive \
      --mode=sample,eval --config.guidance.scale=2.0

``jaxdiff reproduce guided_distill_mnist5k`` runs all of it against the teacher
(docs/methods/guided_distill_mnist5k.md).
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config
from jaxdiff.objectives import objective_config

HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER_WORKDIR = os.path.join("runs", "mnist5k")
GUIDED_WORKDIR = os.path.join("runs", "mnist5k_guided")
STEPS_PER_ROUND = 300


def get_config(stage: str = "guided"):
    """'guided': stage one from the README model; 'progressive': stage two from stage one."""
    config = load_config_file(os.path.join(HERE, "mnist5k.py"))
    config.model.guidance_embedding = True
    config.guidance = guidance_config("distilled", scale=1.65)  # the teacher's CFG scale
    config.optim.lr = 3e-4                 # fine-tuning from the teacher: constant, low
    config.optim.lr_schedule = "constant"
    config.optim.warmup_steps = 50
    if stage == "guided":
        config.distill.teacher_workdir = TEACHER_WORKDIR
        # Meng et al. draw w ~ U[0, 4] (s in [1, 5]); on MNIST-5k the useful scales are below 3.
        config.objective = objective_config("guided_distill", scale_min=1.0, scale_max=3.0)
        config.train.num_steps = 800
        config.train.checkpoint_every = 400
        return config
    if stage != "progressive":
        raise ValueError(f"configs/mnist5k_distill.py: choose ':guided' or ':progressive', got "
                         f"{stage!r}")
    config.distill.teacher_workdir = GUIDED_WORKDIR
    config.objective = objective_config("progressive_distill", teacher_steps=16, rounds=4,
                                        steps_per_round=STEPS_PER_ROUND, scale_min=1.0,
                                        scale_max=3.0)
    config.train.num_steps = 4 * STEPS_PER_ROUND
    config.train.checkpoint_every = STEPS_PER_ROUND
    config.train.keep_checkpoints = 4
    config.sample.sampler = "ddim"         # the rule the students were distilled for
    config.sample.grid = "uniform_t_to_zero"
    config.sample.steps = 1                # the last round's student
    return config
