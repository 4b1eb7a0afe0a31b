"""The guidance methods at full scale on class-conditional ImageNet 64x64: the DiT-B/2 of
configs/imagenet64_dit.py sampled with one transform each (variants), stated with each paper's
setup and what differs here.

  autoguidance  Karras et al. 2024 guide EDM2-S with EDM2-XS trained for a fraction of the steps,
                scale about 2.1-2.3 at 512 px.  Here the bad model is the DiT-S/2 of
                configs/imagenet64_tstitch.py:small (same data, schedule, parameterization), DDIM
                50 (uniform t), scale 2.0.
  apg           Sadat et al. 2024 run high guidance scales with eta = 0, a norm threshold and a
                momentum of -0.5 (not supported: a Denoiser carries no state between steps).
                Here scale 4, eta 0, norm threshold 0 (off; set r for the model's norms), DDIM 50.
  elucd         Ma et al. 2024 guide ADM ImageNet 128 with an off-the-shelf ResNet-101 (softplus
                beta 3), tau1 = 1, tau2 = 0.5, gamma = 0.3, scale 1, DDPM 250.  Here the clean
                classifier is jaxdiff's own CNN trained on ImageNet 64 (--mode=train_classifier),
                DDPM 250 on the uniform-logSNR grid (docs/guidance.md: gradient guidance and
                coarse grids).
  steered       Nair et al. 2023 steer unconditional face models (256 px) by a measurement of one
                image, with re-noising loops.  Here inpainting (half the pixels hidden) of
                images[image_index] of a .npy of held-out ImageNet-64 images, by the conditional
                model at the sampled labels, DDPM 100 on the uniform-logSNR grid with 4
                re-noising passes per step, scale 1 (our choices).

Variants: configs/imagenet64_guidance.py:autoguidance (the default),
configs/imagenet64_guidance.py:apg, configs/imagenet64_guidance.py:elucd,
configs/imagenet64_guidance.py:steered.

  jaxdiff --config=configs/imagenet64_dit.py --workdir=gs://BUCKET/runs/in64_dit \
      --config.data.tfds_data_dir=$TFDS_DIR                                    # the model
  jaxdiff --config=configs/imagenet64_tstitch.py:small --workdir=gs://BUCKET/runs/in64_dit_s \
      --config.data.tfds_data_dir=$TFDS_DIR                                    # the bad model
  jaxdiff --config=configs/imagenet64_guidance.py:autoguidance \
      --workdir=gs://BUCKET/runs/in64_dit --mode=sample,eval --config.data.tfds_data_dir=$TFDS_DIR
"""
import os

import ml_collections

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("autoguidance", "apg", "elucd", "steered")


def get_config(variant: str = "autoguidance"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/imagenet64_guidance.py: unknown variant {variant!r}; "
                         f"choose one of {list(VARIANTS)}")
    config = load_config_file(os.path.join(HERE, "imagenet64_dit.py"))
    config.sample.sampler, config.sample.grid, config.sample.steps = "ddim", "uniform_t", 50
    config.sample.num_samples = 50_000
    config.sample.shard_size = 1000
    if variant == "autoguidance":
        config.guidance = guidance_config("autoguidance", scale=2.0,
                                          bad_workdir="gs://BUCKET/runs/in64_dit_s")
    elif variant == "apg":
        config.guidance = guidance_config("apg", scale=4.0, eta=0.0, norm_threshold=0.0)
    elif variant == "elucd":
        config.sample.sampler, config.sample.grid, config.sample.steps = \
            "ddpm", "uniform_logsnr", 250
        config.guidance = guidance_config("elucd", scale=1.0, tau1=1.0, tau2=0.5, gamma=0.3)
    else:
        config.sample.sampler, config.sample.grid, config.sample.steps = \
            "ddpm", "uniform_logsnr", 100
        config.sample.options = ml_collections.ConfigDict(dict(eta=1.0, resample=4))
        config.sample.num_samples = 1000
        config.guidance = guidance_config("steered", operator="inpaint", mask_fraction=0.5,
                                          scale=1.0, images="gs://BUCKET/in64_heldout.npy")
    return config
