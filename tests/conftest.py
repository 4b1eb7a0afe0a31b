"""Test-session setup shared by every test module.

On an accelerator, float32 matmuls and convolutions run at reduced precision under JAX's default
(TF32 tensor cores on Ampere and later GPUs, bfloat16 passes on TPUs: ~1e-3 relative error).
The tests compare against analytic and float32 references at tolerances set for float32, so on
a GPU or TPU they run with ``jax_default_matmul_precision = "highest"``; on the CPU, whose
float32 products are exact float32 already, nothing is changed.

Compilation is made cheaper for the session (a shared persistent cache, the CPU backend's
lowest LLVM optimisation level): ``tests/helpers/compile_speed.py``.
"""
from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config) -> None:
    import jaxdiff  # noqa: F401  (first: sets its CPU XLA flag before the backend starts)
    import jax

    from tests.helpers.compile_speed import configure_session

    configure_session(config._tmp_path_factory)
    if jax.default_backend() != "cpu":
        jax.config.update("jax_default_matmul_precision", "highest")
