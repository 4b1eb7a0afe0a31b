"""The sampling job: resume after interruption, device invariance, verified shards, errors, and
the model-only restore (no optimizer state is built)."""
import os
import shutil
import subprocess
import sys

import chex
import numpy as np
import pytest

from jaxdiff.jobs import sample
from jaxdiff.jobs import samples_io as IO
from tests.sample_job_common import tiny_checkpoint, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir holding a step-0 checkpoint of the tiny model."""
    return tiny_checkpoint(str(tmp_path_factory.mktemp("sample_job")), 0)


def _run(workdir, name, n=10, size=4, guidance=None, stitch=None, **overrides):
    cfg = tiny_config()
    cfg.sample.out_name = name
    cfg.sample.num_samples = n
    cfg.sample.shard_size = size
    for k, v in overrides.items():
        cfg.sample[k] = v
    for k, v in (guidance or {}).items():
        cfg.guidance[k] = v
    if stitch is not None:
        cfg.stitch.workdirs, cfg.stitch.fractions = (stitch[0],), (stitch[1],)
    return sample.sample_job(cfg, workdir)


def test_interrupted_job_resumes_bit_identical(workdir, monkeypatch):
    full = _run(workdir, "full")
    imgs_full, labels_full, proto = IO.load_samples(full["out_dir"])
    assert imgs_full.shape == (10, 8, 8, 1) and imgs_full.dtype == np.uint8
    np.testing.assert_array_equal(labels_full, np.arange(10) % 10)   # class-balanced
    assert proto["nfe"] == 4 and proto["network_evaluations_per_sample"] == 8

    calls = {"n": 0}
    real_write = IO.write_shard

    def dying_write(path, *arrays):
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated kill after the first shard")
        calls["n"] += 1
        real_write(path, *arrays)

    monkeypatch.setattr(IO, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _run(workdir, "resumed")
    out = os.path.join(workdir, "samples", "resumed")
    assert sorted(f for f in os.listdir(out) if f.startswith("shard")) == ["shard_00000.npz"]
    before = os.stat(os.path.join(out, "shard_00000.npz")).st_mtime_ns
    monkeypatch.setattr(IO, "write_shard", real_write)
    _run(workdir, "resumed")
    assert os.stat(os.path.join(out, "shard_00000.npz")).st_mtime_ns == before  # not rewritten
    imgs, labels, _ = IO.load_samples(out)
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
    a, la, _ = IO.load_samples(one["out_dir"])
    b, lb, _ = IO.load_samples(os.path.join(workdir, "samples", "dev8"))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_bad_shards_are_clear_errors_and_never_overwritten(workdir):
    res = _run(workdir, "bad", n=8, size=4)
    shard = os.path.join(res["out_dir"], "shard_00001.npz")
    original = IO.read_shard(shard)
    with open(shard, "r+b") as f:
        f.truncate(40)
    corrupted = open(shard, "rb").read()
    with pytest.raises(IO.ShardError, match="corrupted"):
        IO.load_samples(res["out_dir"])
    # Sampling again moves the damaged shard aside (kept as it was) and draws it again.
    _run(workdir, "bad", n=8, size=4)
    assert open(shard + ".corrupt", "rb").read() == corrupted
    chex.assert_trees_all_equal(IO.read_shard(shard), original)
    np.savez(shard, samples=np.zeros((4, 8, 8, 1), np.float32), labels=np.zeros(4, np.int32),
             indices=np.arange(4, 8))
    with pytest.raises(IO.ShardError, match="uint8"):
        IO.load_samples(res["out_dir"])
    np.savez(shard, samples=np.zeros((4, 9, 9, 1), np.uint8), labels=np.zeros(4, np.int32),
             indices=np.arange(4, 8))
    with pytest.raises(IO.ShardError, match="example shape"):
        IO.load_samples(res["out_dir"])
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match="missing"):
        IO.load_samples(res["out_dir"])


def test_protocol_mismatch_and_missing_checkpoint(workdir, tmp_path):
    _run(workdir, "proto", n=4, size=4)
    with pytest.raises(ValueError, match="another protocol"):
        _run(workdir, "proto", n=4, size=4, guidance=dict(scale=3.0))
    with pytest.raises(FileNotFoundError, match="train first"):
        _run(str(tmp_path), "x", n=4, size=4)
    shutil.rmtree(os.path.join(workdir, "samples", "proto"))


def _copy_checkpoints(workdir, dest):
    shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(dest, "checkpoints"))
    return str(dest)


def test_sampling_reads_only_the_model_item(workdir, tmp_path):
    """The optimizer state, step and key (the ``train`` item) are never read: sampling from a
    checkpoint whose ``train`` item was deleted gives the same samples."""
    ref = _run(workdir, "model_only_ref", n=4, size=4)
    wd = _copy_checkpoints(workdir, tmp_path)
    train_item = os.path.join(wd, "checkpoints", "0", "train")
    assert os.path.isdir(train_item)
    shutil.rmtree(train_item)
    out = _run(wd, "model_only", n=4, size=4)
    a, _, _ = IO.load_samples(ref["out_dir"])
    b, _, _ = IO.load_samples(out["out_dir"])
    np.testing.assert_array_equal(a, b)


def test_checkpoint_of_the_earlier_layout_is_a_one_line_error(tmp_path):
    from jaxdiff.checkpoint import Checkpointer, CheckpointFormatError

    old = Checkpointer(os.path.join(tmp_path, "checkpoints"), async_save=False)  # one 'state'
    old.save(3, {"step": np.int32(3), "params": {"w": np.zeros(2, np.float32)}}, force=True)
    old.close()
    with pytest.raises(CheckpointFormatError, match="earlier jaxdiff.*train again"):
        _run(str(tmp_path), "old", n=4, size=4)


def test_stitch_section_gives_the_first_steps_to_the_other_model(workdir, tmp_path):
    """config.stitch: step fraction 1 samples as the other model alone, 0.5 gives each model 2
    of the 4 steps (the protocol records it), and stitching a model after itself is that
    model, bit for bit."""
    other = tiny_checkpoint(str(tmp_path / "other"), 1)

    def load(res):
        return IO.load_samples(res["out_dir"])

    plain, other_plain = _run(workdir, "st_plain", n=4), _run(other, "st_plain", n=4)
    a, b = load(plain)[0], load(other_plain)[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() > 10
    np.testing.assert_array_equal(load(_run(workdir, "st_all", n=4, stitch=(other, 1.0)))[0], b)
    np.testing.assert_array_equal(load(_run(workdir, "st_self", n=4, stitch=(workdir, 0.5)))[0],
                                  a)
    half = _run(workdir, "st_half", n=4, stitch=(other, 0.5))
    _, _, proto = load(half)     # (the mixed samples themselves: tests/test_tstitch.py)
    assert proto["stitch"] == dict(workdirs=[other], fractions=[0.5], nfe_per_model=[2, 2])
    tag = IO.protocol_tag(proto)
    assert tag.endswith("-stitch-other0.5"), tag
    with pytest.raises(Exception, match=r"config\.stitch\.workdirs\[0\]: no checkpoint"):
        _run(workdir, "st_missing", n=4, stitch=(str(tmp_path / "none"), 0.5))
    assert not os.path.exists(os.path.join(workdir, "samples", "st_missing"))


def test_guidance_tags_tell_apart_what_draws_different_samples():
    """Two guidance sections that draw different samples get different output directories: a
    CFG guidance interval or APG's momentum is part of the tag; CFG at its defaults keeps the
    short 'cfg<scale>'."""
    from jaxdiff.guidance import guidance_config

    def tag(name, **fields):
        return IO.guidance_tag(guidance_config(name, **fields).to_dict())

    assert tag("cfg", scale=1.65) == "cfg1.65"
    tags = [tag("cfg", scale=2.0), tag("cfg", scale=2.0, t_lo=0.2),
            tag("cfg", scale=2.0, t_hi=0.9), tag("apg", scale=2.0),
            tag("apg", scale=2.0, momentum=-0.5)]
    assert len(set(tags)) == len(tags), tags
