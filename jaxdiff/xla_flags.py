"""XLA flags jaxdiff sets for itself on CPU.

On x86 CPUs, jaxlib 0.10's default routes convolutions and dots through the experimental YNN
fusion path, which runs a class-conditional U-Net's train step ~2.5-4x slower than XLA's Eigen
path (a 3x3 convolution's weight gradient at 62 vs 198 GFLOP/s on a 2-core CPU; the mnist5k
train step 2.69 s -> 0.70 s, identical loss to 7 digits; docs/performance.md).
The flag only selects which CPU kernels run (results agree to float32 rounding) and does
nothing on GPU/TPU.  It is appended to ``XLA_FLAGS`` at import, before any backend starts, and
only for jaxlib versions known to accept it (an unknown flag aborts XLA).  Opt out with
``JAXDIFF_NO_XLA_FLAGS=1``; flags already present in ``XLA_FLAGS`` are left alone.
"""
from __future__ import annotations

import os
from importlib import metadata

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot",)
_TESTED_JAXLIB = ((0, 10),)  # (major, minor) series on which the flags were verified


def _jaxlib_series() -> tuple[int, int] | None:
    try:
        major, minor = metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def configure() -> list[str]:
    """Appends the CPU flags to XLA_FLAGS when safe; returns the flags added."""
    if os.environ.get("JAXDIFF_NO_XLA_FLAGS") or _jaxlib_series() not in _TESTED_JAXLIB:
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
