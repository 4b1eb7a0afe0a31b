"""Samplers: a registry of integrators from noise to data; see ``base.sample``.

Importing this package registers every sampler module.
"""
from jaxdiff.samplers import ddim  # noqa: F401  (registers ddim, ddpm)
from jaxdiff.samplers.base import (SAMPLERS, SampleOutput, SamplerContext, get_sampler, nfe_of,
                                   register, sample, steps_for_nfe)

__all__ = ["SAMPLERS", "SampleOutput", "SamplerContext", "get_sampler", "nfe_of", "register",
           "sample", "steps_for_nfe"]
