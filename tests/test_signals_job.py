"""A 1-D signal dataset through the command line: ``configs/signals1d.py`` trains the registered
1-D U-Net, samples float32 shards (no uint8, no picture) and evaluates them with the signal
metrics (Frechet distance and MMD of the raw values, class accuracy)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.compile_speed import full_optimisation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "signals1d.py")
TIMEOUT_S = 600
STEPS = 300
NUM_SAMPLES = 120
# chance is 0.25 (4 classes); measured on a 2-core x86 CPU after 300 steps: see below
MIN_ACCURACY = 0.5


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("signals") / "run"
    env = dict(full_optimisation(os.environ), JAX_PLATFORMS="cpu",   # run time dominates
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdiff.main", f"--config={CONFIG}", f"--workdir={workdir}",
         "--mode=train,sample,eval", f"--config.train.num_steps={STEPS}",
         "--config.train.progress_bar=False", f"--config.sample.num_samples={NUM_SAMPLES}",
         "--config.sample.shard_size=60", "--config.sample.steps=20"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc


def test_signals_train_sample_and_evaluate_through_the_cli(job):
    workdir, proc = job
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["step"] == STEPS and summary["sample_grid"] is None  # no picture of signals
    (out,) = [d for d in (workdir / "samples").iterdir() if d.is_dir()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "signal" and manifest["example_shape"] == [64, 2]
    with np.load(out / "shard_00000.npz") as z:
        assert z["samples"].dtype == np.float32 and z["samples"].shape == (60, 64, 2)
        assert np.all(np.isfinite(z["samples"]))
    assert not (out / "grid.png").exists()
    result = json.loads((out / "eval.json").read_text())
    m = result["signal_metrics"]
    assert m["num_samples"] == NUM_SAMPLES and m["num_reference"] == 400
    assert m["reference_class_accuracy"] >= 0.95
    assert m["fd"] > 0 and np.isfinite(m["mmd2"])
    assert result["class_accuracy"] >= MIN_ACCURACY, m
    assert "class_accuracy" in proc.stdout
