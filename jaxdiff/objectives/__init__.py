"""Training objectives: what the training job optimises (see ``objectives.base``).

Importing this package registers every objective in ``OBJECTIVES``; ``config.objective.name``
picks one.
"""
from jaxdiff.objectives import ctrl, deediff, denoising  # noqa: F401  (register their objectives)
from jaxdiff.objectives.base import (OBJECTIVES, Objective, build_objective, objective_config,
                                     objective_family, register_objective)

__all__ = ["OBJECTIVES", "Objective", "build_objective", "objective_config", "objective_family",
           "register_objective"]
