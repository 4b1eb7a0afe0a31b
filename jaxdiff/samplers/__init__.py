"""Samplers: a registry of integrators from noise to data; see ``base.sample``.

Importing this package registers every sampler module.
"""
from jaxdiff.samplers import consistency  # noqa: F401  (registers consistency)
from jaxdiff.samplers import ddim  # noqa: F401  (registers ddim, ddpm)
from jaxdiff.samplers import dpm_solver  # noqa: F401  (registers dpmpp_2m, dpmpp_3m)
from jaxdiff.samplers import euler  # noqa: F401  (registers euler)
from jaxdiff.samplers import evodiff  # noqa: F401  (registers evodiff)
from jaxdiff.samplers import heun  # noqa: F401  (registers heun, heun_sde)
from jaxdiff.samplers import ipndm  # noqa: F401  (registers ipndm)
from jaxdiff.samplers import unipc  # noqa: F401  (registers unipc)
from jaxdiff.samplers.base import (SAMPLERS, SampleOutput, SamplerContext, SamplerSpec,
                                   SolverCarry, check_options, compile_count, get_sampler, nfe_of,
                                   register, sample, steps_for_nfe)

__all__ = ["SAMPLERS", "SampleOutput", "SamplerContext", "SamplerSpec", "SolverCarry",
           "check_options", "compile_count", "get_sampler", "nfe_of", "register", "sample",
           "steps_for_nfe"]
