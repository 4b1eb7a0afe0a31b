"""jaxdiff: conditional diffusion models in JAX / Flax NNX.

The core boundary is the Denoiser (``jaxdiff.denoiser``): a pure function (x, t, cond) -> x0_hat
built from a network, a schedule (``jaxdiff.schedules``) and a parameterization
(``jaxdiff.parameterization``).  Samplers (``jaxdiff.samplers``), guidance
(``jaxdiff.guidance``) and everything above them consume Denoisers.
"""
from jaxdiff import xla_flags as _xla_flags

_xla_flags.configure()  # CPU kernel selection; must run before a JAX backend starts

__version__ = "0.1.0"
