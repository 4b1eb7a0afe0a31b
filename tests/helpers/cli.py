"""Running ``python -m jaxdiff.main`` from the tests: the environment and the tiny digits job."""
import os
import re
import subprocess
import sys

from tests.helpers.compile_speed import cache_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(ROOT, "configs", "digits.py")
TIMEOUT_S = 420

# A reduced digits job (as in tests/test_train.py JOB, so the compiled programs are shared
# through the persistent compilation cache).
TINY_FLAGS = ["--config.model.base_channels=8", "--config.model.channel_mult=(1,)",
              "--config.train.batch_size=16", "--config.train.progress_bar=False",
              "--config.sample.steps=2", "--config.sample.grid_per_class=1",
              "--config.train.num_steps=6", "--config.train.checkpoint_every=2",
              "--config.train.sample_every=2", "--config.train.log_every=1"]


def cli_env(tmp_path_factory, devices: int = 1, **extra) -> dict:
    """The environment of a CLI subprocess: CPU, ``devices`` simulated devices, the session's
    persistent compilation cache, the repository on PYTHONPATH, no distributed variables."""
    env = dict(os.environ)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "JAXDIFF_DEBUG", "JAXDIFF_INCEPTION_WEIGHTS"):
        env.pop(var, None)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env.update(cache_env(tmp_path_factory), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
               PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]), **extra)
    return env


def cli(args, env, config: str = DIGITS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxdiff.main", f"--config={config}", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
