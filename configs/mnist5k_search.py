"""Inference-time search on MNIST-5k: the README's model (configs/mnist5k.py) sampled without
guidance, 15 steps, every sample drawn by a search scored by the pinned classifier's
log p(c | x0) (``config.search``, docs/search.md).  The variant names the search; the default is
Diffusion Tree Sampling (Jain et al. 2025) with 8 rollouts per sample.

  jaxdiff --config=configs/mnist5k.py --workdir=runs/mnist5k --mode=train   # the README model
  jaxdiff --config=configs/mnist5k_search.py --workdir=runs/mnist5k --mode=sample,eval
  jaxdiff --config=configs/mnist5k_search.py:random --workdir=runs/mnist5k --mode=sample,eval \
      --config.search.candidates=8

Variants: dts, dts_star, smc, importance, random, zero_order, and
  configs/mnist5k_search.py:paths             search over paths (2 paths, 2 noisings, 3 rounds)
  configs/mnist5k_search.py:self_supervised   best-of-4 by the feature-similarity verifier,
                                              which sees no class

``jaxdiff reproduce search_mnist5k`` and ``dts_mnist5k`` measure these searches against NFE
(docs/methods/).
"""
import os

from jaxdiff.config import load_config_file
from jaxdiff.guidance import guidance_config
from jaxdiff.search.config import search_config

HERE = os.path.dirname(os.path.abspath(__file__))
# per search: its fields (the rest are its defaults) and the sampler it runs on
VARIANTS = {
    "dts": (dict(rollouts=8, branch_every=3, widening=1.0, alpha=0.5), "ddpm"),
    "dts_star": (dict(rollouts=8, branch_every=3, widening=1.0, alpha=0.5), "ddpm"),
    "smc": (dict(particles=8), "ddpm"),
    "importance": (dict(candidates=8), "ddpm"),
    "random": (dict(candidates=2), "dpmpp_2m"),
    "zero_order": (dict(neighbours_per_step=2, iterations=3), "dpmpp_2m"),
    "paths": (dict(paths=2, branches=2, start=6, forward=3, backward=6), "dpmpp_2m"),
    "self_supervised": (dict(candidates=4, verifier="feature_similarity"), "dpmpp_2m"),
}
SEARCH_OF = {"self_supervised": "random"}      # a variant's search, where it is not its name


def get_config(search: str = "dts"):
    if search not in VARIANTS:
        raise ValueError(f"configs/mnist5k_search.py: choose one of {sorted(VARIANTS)}, got "
                         f"{search!r}")
    config = load_config_file(os.path.join(HERE, "mnist5k.py"))
    fields, sampler = VARIANTS[search]
    config.guidance = guidance_config("none")
    config.sample.update(dict(sampler=sampler, steps=15, grid="uniform_t", num_samples=1000))
    config.sample.options = {}
    config.search = search_config(SEARCH_OF.get(search, search), **fields)
    return config
