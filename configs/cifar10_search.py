"""Ma et al.'s inference-time searches (arXiv 2501.09732) at full scale: the class-conditional
CIFAR-10 U-Net of configs/cifar10_unet.py sampled without guidance by DPM-Solver++(2M), 20 steps,
every sample drawn by a search over its noise scored by the evaluation's feature network.  The
default is random search (best of 16 initial noises by the classifier's log p(c | x0), the
paper's oracle verifier; 320 NFE per sample); the variants

  configs/cifar10_search.py:zero_order       4 neighbours at cos 0.95, 4 iterations (340 NFE)
  configs/cifar10_search.py:paths            search over paths: 4 paths, 4 noisings per round,
                                             first solve to step 8, forward 4, back 8 (3 rounds,
                                             452 NFE)
  configs/cifar10_search.py:self_supervised  best of 16 by the self-supervised verifier: the
                                             cosine similarity of the features of x0 and of the
                                             model's x0-prediction at sigma/alpha = 2/3 (336 NFE)

The paper searches SiT-XL on ImageNet with up to thousands of NFE per sample; these budgets are
a starting point to verify on an accelerator.

  jaxdiff --config=configs/cifar10_unet.py --workdir=gs://BUCKET/runs/cifar10_unet \
      --config.data.tfds_data_dir=$TFDS_DIR                                    # train
  jaxdiff --config=configs/cifar10_search.py:paths --workdir=gs://BUCKET/runs/cifar10_unet \
      --mode=sample,eval --config.data.tfds_data_dir=$TFDS_DIR
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config
from jaxdiff.search.config import search_config

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {
    "random": ("random", dict(candidates=16)),
    "zero_order": ("zero_order", dict(neighbours_per_step=4, iterations=4, c=0.95)),
    "paths": ("paths", dict(paths=4, branches=4, start=8, forward=4, backward=8)),
    "self_supervised": ("random", dict(candidates=16, verifier="feature_similarity")),
}


def get_config(search: str = "random"):
    if search not in VARIANTS:
        raise ValueError(f"configs/cifar10_search.py: choose one of {sorted(VARIANTS)}, got "
                         f"{search!r}")
    config = load_config_file(os.path.join(HERE, "cifar10_unet.py"))
    config.guidance = guidance_config("none")
    config.sample.update(dict(sampler="dpmpp_2m", steps=20, grid="uniform_t",
                              num_samples=10_000, shard_size=500))
    config.sample.options = {}
    name, fields = VARIANTS[search]
    config.search = search_config(name, **fields)
    return config
