"""PPAP (Go et al., CVPR 2023) at full scale: the unconditional half of the DiT-B/2 of
configs/imagenet64_dit.py guided by five LoRA experts of a clean ImageNet-64 classifier,
distilled without labels from the model's own samples.

The paper's setup: ADM ImageNet 256 unconditional, an off-the-shelf ResNet-50, five experts over
equal ranges of the 1,000 steps, LoRA rank 16 / alpha 8 on the convolutions, AdamW lr 1e-4,
weight decay 0.05, teacher temperature 0.25, guidance scale 7.5.  Here the clean classifier is
jaxdiff's own CNN trained on ImageNet 64 (--mode=train_classifier), and the pool of model
samples (100,000, DDIM 25) and the step budget are our choices.

  jaxdiff --config=configs/imagenet64_dit.py --workdir=gs://BUCKET/runs/in64_dit \
      --config.data.tfds_data_dir=$TFDS_DIR                                    # the model
  jaxdiff --config=configs/imagenet64_ppap.py --workdir=gs://BUCKET/runs/in64_dit \
      --mode=train_classifier,train_guidance,sample,eval --config.data.tfds_data_dir=$TFDS_DIR
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = load_config_file(os.path.join(HERE, "imagenet64_dit.py"))
    g = config.guidance_train
    g.target, g.num_experts = "distill", 5
    g.lora_rank, g.lora_alpha, g.temperature = 16, 8.0, 0.25
    g.lr, g.weight_decay = 1e-4, 0.05
    g.steps, g.batch_size = 60_000, 64          # 64 examples per expert per step
    g.pool_size, g.pool_sampler, g.pool_steps, g.pool_batch = 100_000, "ddim", 25, 500
    g.checkpoint_every = 2000
    g.out_dir = ""                               # WORKDIR/guidance_experts
    config.sample.sampler = "ddim"
    config.sample.grid = "uniform_t"
    config.sample.steps = 25
    config.sample.num_samples = 50_000
    config.sample.shard_size = 1000
    # experts_dir must name the bank before sampling: WORKDIR/guidance_experts
    config.guidance = guidance_config("ppap", scale=7.5, unconditional=True,
                                      experts_dir="gs://BUCKET/runs/in64_dit/guidance_experts")
    return config
