"""Guidance: Denoiser -> Denoiser transforms that compose (CFG(ClassifierGuidance(D)), ...).

Importing this package registers every transform in ``GUIDANCE`` (see ``guidance.base``).
"""
from jaxdiff.cond import null_like
from jaxdiff.guidance.base import (GUIDANCE, Guided, NullCondition, build_guidance,
                                   check_guidance, evals_per_call, guidance_config,
                                   register_guidance)
from jaxdiff.guidance.apg import APG
from jaxdiff.guidance.autoguidance import Autoguidance
from jaxdiff.guidance.cfg import CFG
from jaxdiff.guidance.cfgpp import CFGPlusPlus
from jaxdiff.guidance.classifier import ClassifierGuidance
from jaxdiff.guidance.elucd import EluCD
from jaxdiff.guidance.ppap import ExpertBank
from jaxdiff.guidance.steered import Steered

__all__ = ["APG", "Autoguidance", "CFG", "CFGPlusPlus", "ClassifierGuidance", "EluCD",
           "ExpertBank", "GUIDANCE", "Guided", "NullCondition", "Steered",
           "build_guidance", "check_guidance", "evals_per_call",
           "guidance_config", "null_like", "register_guidance"]
