"""T-Stitch (Pan et al., ICLR 2025) at full scale: class-conditional ImageNet 64x64, the DiT-B/2
of configs/imagenet64_dit.py (hidden 768, 12 blocks) after a DiT-S/2 (hidden 384, 12 blocks,
6 heads: about 4x fewer FLOPs per call) trained with the same recipe, data, schedule and
parameterization; sampled as the paper samples DiT: DDIM 100 steps (uniform t), CFG scale 1.5,
the small model taking the first 40% of the steps.

  jaxdiff --config=configs/imagenet64_dit.py --workdir=gs://BUCKET/runs/in64_dit \
      --config.data.tfds_data_dir=$TFDS_DIR
  jaxdiff --config=configs/imagenet64_tstitch.py:small --workdir=gs://BUCKET/runs/in64_dit_s \
      --config.data.tfds_data_dir=$TFDS_DIR
  jaxdiff --config=configs/imagenet64_tstitch.py --workdir=gs://BUCKET/runs/in64_dit \
      --mode=sample,eval --config.stitch.workdirs="('gs://BUCKET/runs/in64_dit_s',)" \
      --config.stitch.fractions='(0.4,)' --config.data.tfds_data_dir=$TFDS_DIR
"""
import os

from jaxdiff.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(model: str = "large"):
    """'large' (default): DiT-B/2 sampled after the small model; 'small': DiT-S/2's training
    config."""
    config = load_config_file(os.path.join(HERE, "imagenet64_dit.py"))
    if model == "small":
        config.model.hidden_size = 384
        config.model.num_heads = 6
        return config
    if model != "large":
        raise ValueError(f"configs/imagenet64_tstitch.py: choose ':small' or ':large', got "
                         f"{model!r}")
    config.stitch.workdirs = (os.path.join("runs", "in64_dit_s"),)
    config.stitch.fractions = (0.4,)
    config.sample.sampler = "ddim"
    config.sample.grid = "uniform_t"
    config.sample.steps = 100
    config.guidance.scale = 1.5
    return config
