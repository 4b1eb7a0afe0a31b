"""T-Stitch (Pan et al., ICLR 2025) on MNIST-5k: the README's U-Net (configs/mnist5k.py,
base_channels 32) takes the last part of every solve and a small U-Net of the same data, schedule
and parameterization (base_channels 16: about 4x fewer FLOPs per call) the first, noisy part.

  # the two models (the large one is the README's main job)
  jaxdiff --config=configs/mnist5k.py --workdir=runs/mnist5k --mode=train
  jaxdiff --config=configs/mnist5k_tstitch.py:small --workdir=runs/mnist5k_small --mode=train
  # stitched sampling and its evaluation: the small model takes the first 40% of the steps
  jaxdiff --config=configs/mnist5k_tstitch.py --workdir=runs/mnist5k --mode=sample,eval \
      --config.stitch.fractions='(0.4,)'

``jaxdiff reproduce tstitch_mnist5k`` sweeps the fraction (docs/methods/tstitch_mnist5k.md).
"""
import os

from jaxdiff.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL_WORKDIR = os.path.join("runs", "mnist5k_small")


def get_config(model: str = "large"):
    """'large' (default): the README's model sampled after the small one; 'small': the small
    model's training config."""
    config = load_config_file(os.path.join(HERE, "mnist5k.py"))
    if model == "small":
        config.model.base_channels = 16
        return config
    if model != "large":
        raise ValueError(f"configs/mnist5k_tstitch.py: choose ':small' or ':large', got "
                         f"{model!r}")
    config.stitch.workdirs = (SMALL_WORKDIR,)
    config.stitch.fractions = (0.4,)
    return config
