"""CTRL (Zhao et al., ICLR 2025) at full scale: an unconditional CIFAR-10 U-Net
(configs/cifar10_unet.py trained with --config.diffusion.p_uncond=1.0) given the class
condition by RL fine-tuning with the evaluation's feature network as the classifier reward,
through a 50-step DDPM chain (the official code's DDIM with eta = 1 and 50 steps), gradients
through the last 40 steps (the official truncated backpropagation) with every step
recomputed in the backward pass.  The paper fine-tunes Stable Diffusion 1.5 with LoRA on
compressibility / aesthetic classes (kl_weight 0.01 on a per-dimension KL, loss_coeff 0.1,
lr 1e-4); alpha here weights the KL itself.  Not yet run: a recipe to verify on an
accelerator.

  jaxdiff --config=configs/cifar10_unet.py --workdir=gs://BUCKET/runs/cifar10_uncond \
      --config.diffusion.p_uncond=1.0 --config.data.tfds_data_dir=$TFDS_DIR
  jaxdiff --config=configs/cifar10_ctrl.py --workdir=gs://BUCKET/runs/cifar10_ctrl \
      --mode=distill,sample,eval --config.data.tfds_data_dir=$TFDS_DIR
"""
import os

import ml_collections

from jaxdiff.config import load_config_file
from jaxdiff.objectives import objective_config
from jaxdiff.objectives.ctrl import ctrl_sampling

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = load_config_file(os.path.join(HERE, "cifar10_unet.py"))
    config.distill.teacher_workdir = "gs://BUCKET/runs/cifar10_uncond"
    config.objective = objective_config("ctrl", alpha=1.0, steps=50, grid="uniform_t", eta=1.0,
                                        backprop_steps=40, remat=True)
    config.optim.lr = 1e-4
    config.optim.lr_multipliers = ml_collections.ConfigDict(dict(class_table=100.0))  # 1e-2,
    #                                        the official class embedding's own rate
    config.optim.lr_schedule = "constant"
    config.optim.warmup_steps = 100
    config.train.batch_size = 128          # rollouts per step
    config.train.num_steps = 5000
    config.train.checkpoint_every = 500
    return ctrl_sampling(config)
