"""Inference-time search: spend extra sampler solves on a batch and keep, per example, what a
verifier scores highest (Ma et al., arXiv 2501.09732).

  verifiers        (x0, cond) -> (B,) scores: classifier log-probabilities, the exact mixture
                   posterior, analytic rewards, a restricted view
  random_search    best-of-N over the initial noise
  zero_order       norm-preserving neighbours of a pivot noise, K iterations
"""
from jaxdiff.search.base import SearchResult
from jaxdiff.search.random_search import random_search
from jaxdiff.search.zero_order import zero_order_search

__all__ = ["SearchResult", "random_search", "zero_order_search"]
