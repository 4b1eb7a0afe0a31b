"""How the test session compiles: XLA compilation dominates most tests on a CPU (tiny networks,
a few steps each), so the session makes compiling cheaper in two ways.

1. One persistent compilation cache for the whole session, shared by the xdist workers, the
   test processes themselves and the job subprocesses they start.  Many tests compile the same
   programs (a job and its resumed run, the tiny digits job in several modules, a CLI
   subprocess and its in-process reference); every repeat becomes a load.  It lives in the
   session's base temporary directory, so each session starts empty.
2. The CPU backend's code generation at LLVM's lowest optimisation level
   (``--xla_backend_optimization_level=0``): the same HLO programs, compiled faster and run
   slower (the PPAP and early-exit test files: 128 -> 102 s on a 2-core x86 CPU).  Set in ``XLA_FLAGS`` before the backend starts, so the subprocesses that
   copy the environment (and are compared with in-process results) compile the same way.  The
   two end-to-end jobs whose run time dominates (a trained model classifying, a 1-D job
   training 300 steps) take it out again with ``full_optimisation``, and an in-process
   program whose run time dominates compiles with ``jax.jit(...,
   compiler_options=FULL_OPTIMISATION)``.  JAXDIFF_TEST_FULL_OPT=1 keeps the default level
   everywhere.
"""
import os
import re

FAST_COMPILE = "--xla_backend_optimization_level=0"
FULL_OPTIMISATION = {"xla_backend_optimization_level": 2}   # XLA's default level, per program


def shared_cache_dir(tmp_path_factory):
    """The cache directory of this test session: beside the xdist workers' own base
    directories (their common parent), or in the base directory of a run without xdist."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "jax_compilation_cache"
    cache.mkdir(exist_ok=True)
    return cache


def cache_env(tmp_path_factory) -> dict:
    """Environment variables that give a subprocess the session's cache."""
    return dict(JAX_COMPILATION_CACHE_DIR=str(shared_cache_dir(tmp_path_factory)),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def configure_session(tmp_path_factory) -> None:
    """Points this process's JAX at the session's cache and, unless JAXDIFF_TEST_FULL_OPT is
    set, adds FAST_COMPILE to XLA_FLAGS; call before the backend starts."""
    import jax

    if not os.environ.get("JAXDIFF_TEST_FULL_OPT"):
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE}".strip()
    jax.config.update("jax_compilation_cache_dir", str(shared_cache_dir(tmp_path_factory)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def full_optimisation(env: dict) -> dict:
    """``env`` with FAST_COMPILE taken out of its XLA_FLAGS (for jobs whose run time, not
    their compilation, dominates)."""
    env = dict(env)
    env["XLA_FLAGS"] = re.sub(r"\s*--xla_backend_optimization_level=\S+", "",
                              env.get("XLA_FLAGS", "")).strip()
    return env
