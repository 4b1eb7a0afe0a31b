"""Guidance: Denoiser -> Denoiser transforms that compose (CFG(ClassifierGuidance(D)), ...)."""
from jaxdiff.guidance.cfg import CFG, null_like
from jaxdiff.guidance.classifier import ClassifierGuidance

__all__ = ["CFG", "ClassifierGuidance", "null_like"]
