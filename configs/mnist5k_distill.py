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

One-step and two-step generators from the same teacher, its CFG distilled in (scale 1.65):

  # consistency distillation (Song et al. 2023), sampled in 1 or 2 calls
  jaxdiff --config=configs/mnist5k_distill.py:consistency --workdir=runs/mnist5k_cd \
      --mode=distill,sample,eval
  # score implicit matching (Luo et al. 2024), one call
  jaxdiff --config=configs/mnist5k_distill.py:sim --workdir=runs/mnist5k_sim \
      --mode=distill,sample,eval

``jaxdiff reproduce one_step_mnist5k`` runs both against the teacher's Heun sampler
(docs/methods/one_step_mnist5k.md).
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config
from jaxdiff.objectives import objective_config

HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER_WORKDIR = os.path.join("runs", "mnist5k")
GUIDED_WORKDIR = os.path.join("runs", "mnist5k_guided")
STEPS_PER_ROUND = 300


TEACHER_SCALE = 1.65                       # the README's CFG scale, distilled into the students


def get_config(stage: str = "guided"):
    """'guided': stage one from the README model; 'progressive': stage two from stage one;
    'consistency', 'sim': few-step generators from the README model."""
    config = load_config_file(os.path.join(HERE, "mnist5k.py"))
    if stage in ("consistency", "sim"):
        return _one_step(config, stage)
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
        raise ValueError(f"configs/mnist5k_distill.py: choose ':guided', ':progressive', "
                         f"':consistency' or ':sim', got "
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


def _one_step(config, method):
    """The README model distilled into a consistency model or a SIM one-step generator, each
    with the teacher's CFG at ``TEACHER_SCALE`` in its target (sampled without guidance)."""
    config.distill.teacher_workdir = TEACHER_WORKDIR
    config.optim.lr_schedule = "constant"
    config.optim.warmup_steps = 0
    config.train.checkpoint_every = 200
    config.sample.sampler = "ddim"
    config.sample.steps = 1
    if method == "consistency":
        config.objective = objective_config("consistency_distill", num_points=18, decay=0.95,
                                            teacher_scale=TEACHER_SCALE)
        config.optim.lr = 2e-4
        config.train.num_steps = 1000
        config.guidance = guidance_config("consistency")
        config.sample.sampler = "consistency"
        config.sample.grid = "uniform_t_to_zero"
        return config
    config.objective = objective_config("sim", teacher_scale=TEACHER_SCALE, fake_lr=1e-4)
    config.optim.lr = 1e-4
    config.optim.b1 = 0.0                  # Adam(0, 0.999) for both networks, as SIM and SiD
    config.train.num_steps = 600
    config.guidance = guidance_config("one_step")
    return config
