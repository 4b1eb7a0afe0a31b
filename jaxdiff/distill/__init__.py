"""Distillation: students that sample in a few steps, trained from a teacher by
``--mode=distill`` (``config.distill`` names the teacher, ``config.objective`` the method).

  guided_distill        Meng et al. 2023, stage one: one network with the guidance weight as input
  progressive_distill   Salimans & Ho 2022 (Meng et al. stage two): halve the DDIM steps per round
  consistency_distill   Song et al. 2023: a consistency function from the teacher's ODE
  consistency_training  Song et al. 2023: the same from data alone (``--mode=train``)
  sim                   Luo et al. 2024: a one-step generator by score implicit matching

Each method is a training objective (``jaxdiff.objectives.OBJECTIVES``); the distillations are
registered with ``family='distill'`` and hold their teacher in the objective's extra state.
"""
from jaxdiff.distill import consistency, guided, progressive, sim, teacher  # noqa: F401

__all__ = ["consistency", "guided", "progressive", "sim", "teacher"]
