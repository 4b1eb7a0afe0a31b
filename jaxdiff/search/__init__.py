"""Inference-time search: spend extra sampler solves on a batch and keep, per example, what a
verifier scores highest (Ma et al., arXiv 2501.09732).

  verifiers        (x0, cond) -> (B,) scores: classifier log-probabilities, the exact mixture
                   posterior, analytic rewards, a restricted view
  random_search    best-of-N over the initial noise
  zero_order       norm-preserving neighbours of a pivot noise, K iterations
  paths            search over paths: N partial solves, noised forward M times, solved back
                   further and pruned to the verifier's best N, until the clean end
  importance       importance resampling towards p(x0) exp(lambda r(x0))
  smc              sequential Monte Carlo towards the same target, the x0-prediction's reward
                   as the potential
  tree             Diffusion Tree Sampling (DTS: draws from the same target) and Search (DTS*:
                   the best leaf) over a tree of noisy states
"""
from jaxdiff.search.base import SearchResult
from jaxdiff.search.importance import importance_resampling
from jaxdiff.search.paths import path_search
from jaxdiff.search.random_search import random_search
from jaxdiff.search.smc import smc
from jaxdiff.search.tree import DiffusionTrees, dts, dts_star
from jaxdiff.search.zero_order import zero_order_search

__all__ = ["DiffusionTrees", "SearchResult", "dts", "dts_star", "importance_resampling",
           "path_search", "random_search", "smc", "zero_order_search"]
