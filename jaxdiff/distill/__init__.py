"""Distillation: students that sample in a few steps, trained from a teacher by
``--mode=distill`` (``config.distill`` names the teacher, ``config.objective`` the method).

  guided_distill        Meng et al. 2023, stage one: one network with the guidance weight as input
  progressive_distill   Salimans & Ho 2022 (Meng et al. stage two): halve the DDIM steps per round

Each method is a training objective (``jaxdiff.objectives.OBJECTIVES``, ``family='distill'``)
whose extra state holds its teacher.
"""
from jaxdiff.distill import guided, progressive, teacher  # noqa: F401  (register)

__all__ = ["guided", "progressive", "teacher"]
