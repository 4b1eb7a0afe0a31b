"""The sampling job: resume after interruption, device invariance, verified shards, errors."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff import sample
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.data import get_source
from jaxdiff.train import build_setup
from tests.sample_job_common import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir holding a step-0 checkpoint of the tiny model (perturbed so it is not zero)."""
    import jax

    wd = str(tmp_path_factory.mktemp("sample_job"))
    cfg = tiny_config()
    src = get_source(cfg.data, "train")
    _, state = build_setup(cfg, src.num_classes, src.image_shape)
    noise = jax.random.normal(jax.random.key(0), ())
    state["ema"] = tuple(jax.tree.map(lambda p: p + 0.05 * noise * jax.numpy.ones_like(p), e)
                         for e in state["ema"])
    ckpt = Checkpointer(os.path.join(wd, "checkpoints"), async_save=False)
    ckpt.save(0, state, force=True)
    ckpt.close()
    return wd


def _run(workdir, name, n=10, size=4, **overrides):
    cfg = tiny_config()
    cfg.sample.out_name = name
    cfg.sample.num_samples = n
    cfg.sample.shard_size = size
    for k, v in overrides.items():
        cfg.sample[k] = v
    return sample.sample_job(cfg, workdir)


def test_interrupted_job_resumes_bit_identical(workdir, monkeypatch):
    full = _run(workdir, "full")
    imgs_full, labels_full, proto = sample.load_samples(full["out_dir"])
    assert imgs_full.shape == (10, 8, 8, 1) and imgs_full.dtype == np.uint8
    np.testing.assert_array_equal(labels_full, np.arange(10) % 10)   # class-balanced
    assert proto["nfe"] == 4 and proto["network_evaluations_per_sample"] == 8

    calls = {"n": 0}
    real_write = sample._write_atomic_npz

    def dying_write(path, **arrays):
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated kill after the first shard")
        calls["n"] += 1
        real_write(path, **arrays)

    monkeypatch.setattr(sample, "_write_atomic_npz", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _run(workdir, "resumed")
    out = os.path.join(workdir, "samples", "resumed")
    assert sorted(f for f in os.listdir(out) if f.startswith("shard")) == ["shard_00000.npz"]
    before = os.stat(os.path.join(out, "shard_00000.npz")).st_mtime_ns
    monkeypatch.setattr(sample, "_write_atomic_npz", real_write)
    _run(workdir, "resumed")
    assert os.stat(os.path.join(out, "shard_00000.npz")).st_mtime_ns == before  # not rewritten
    imgs, labels, _ = sample.load_samples(out)
    np.testing.assert_array_equal(imgs, imgs_full)
    np.testing.assert_array_equal(labels, labels_full)
    # the samples are not all the same picture
    assert len({im.tobytes() for im in imgs}) == 10


def test_same_samples_on_one_and_eight_devices(workdir):
    one = _run(workdir, "dev1", n=12, size=8)
    env = dict(os.environ, PYTHONPATH=REPO,
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          " --xla_force_host_platform_device_count=8").strip())
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers",
                                                 "sample_job_worker.py"),
                    workdir, "dev8", "12", "8"], check=True, env=env, cwd=REPO, timeout=600)
    a, la, _ = sample.load_samples(one["out_dir"])
    b, lb, _ = sample.load_samples(os.path.join(workdir, "samples", "dev8"))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_bad_shards_are_clear_errors_and_never_overwritten(workdir):
    res = _run(workdir, "bad", n=8, size=4)
    shard = os.path.join(res["out_dir"], "shard_00001.npz")
    with open(shard, "r+b") as f:
        f.truncate(40)
    corrupted = open(shard, "rb").read()
    with pytest.raises(sample.ShardError, match="corrupted"):
        _run(workdir, "bad", n=8, size=4)
    assert open(shard, "rb").read() == corrupted
    np.savez(shard, images=np.zeros((4, 8, 8, 1), np.float32), labels=np.zeros(4, np.int32),
             indices=np.arange(4, 8))
    with pytest.raises(sample.ShardError, match="uint8"):
        sample.load_samples(res["out_dir"])
    np.savez(shard, images=np.zeros((4, 9, 9, 1), np.uint8), labels=np.zeros(4, np.int32),
             indices=np.arange(4, 8))
    with pytest.raises(sample.ShardError, match="image shape"):
        sample.load_samples(res["out_dir"])
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match="missing"):
        sample.load_samples(res["out_dir"])


def test_protocol_mismatch_and_missing_checkpoint(workdir, tmp_path):
    _run(workdir, "proto", n=4, size=4)
    with pytest.raises(ValueError, match="another protocol"):
        _run(workdir, "proto", n=4, size=4, cfg_scale=3.0)
    with pytest.raises(FileNotFoundError, match="train first"):
        _run(str(tmp_path), "x", n=4, size=4)
    shutil.rmtree(os.path.join(workdir, "samples", "proto"))
