"""The distill job end to end on a tiny digits model: a teacher trained by ``--mode=train``,
a guided student (stage one) distilled from it (the teacher restored from its model item
alone, no optimizer built), two progressive rounds distilled from that,
the sampling job on the last round's one-step student; a run resumed from a checkpoint ends
bit-identical to the uninterrupted one (the teacher switch between rounds included); a student
network that is not the teacher's is refused naming the field.  CTRL fine-tuning from the
teacher's null condition (its unconditional model, the reward a briefly trained digits CNN)
runs in the same job and resumes bit-identical too."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxdiff import checkpoint
from jaxdiff.distill.progressive import GRID
from jaxdiff.distill.teacher import load_teacher
from jaxdiff.errors import ConfigError
from jaxdiff.jobs import sample as sample_job
from jaxdiff.jobs import train as train_job
from jaxdiff.jobs.samples_io import load_samples
from jaxdiff.jobs.spec import restore_model, spec_for_data
from jaxdiff.jobs.train import distill, train
from jaxdiff.objectives import objective_config
from tests.sample_job_common import tiny_config


def _config(**fields):
    config = tiny_config()
    config.train.update(dict(num_steps=3, batch_size=16, log_every=1, sample_every=0,
                             checkpoint_every=3))
    config.sample.update(dict(sampler="ddim", steps=2, grid_per_class=1))
    for dotted, value in fields.items():
        section, name = dotted.split(".")
        config[section][name] = value
    return config


def _guided_config(teacher):
    config = _config(**{"model.guidance_embedding": True, "train.num_steps": 2,
                        "train.checkpoint_every": 2, "distill.teacher_workdir": teacher,
                        "guidance.name": "distilled"})
    config.objective = config.objective.__class__(dict(
        name="guided_distill", scale_min=1.0, scale_max=5.0, time_sampler="uniform"))
    return config


def _progressive_config(teacher):
    config = _config(**{"model.guidance_embedding": True, "train.num_steps": 4,
                        "train.checkpoint_every": 1, "train.keep_checkpoints": 4,
                        "distill.teacher_workdir": teacher, "guidance.name": "distilled",
                        "sample.grid": GRID})
    config.objective = config.objective.__class__(dict(
        name="progressive_distill", teacher_steps=4, rounds=2, steps_per_round=2,
        scale_min=1.0, scale_max=3.0))
    return config


def _ctrl_config(teacher):
    config = _config(**{"train.num_steps": 2, "train.batch_size": 8, "train.checkpoint_every": 1,
                        "train.keep_checkpoints": 2, "distill.teacher_workdir": teacher,
                        "eval.classifier_steps": 20})
    config.objective = objective_config("ctrl", alpha=0.5, steps=2, remat=False)
    return config


def _params(config, workdir, step):
    spec, _ = spec_for_data(config)
    params, _ = restore_model(spec, workdir, step, ema_index=-1)
    return params


def test_teacher_to_guided_student_to_progressive_rounds_to_the_sampling_job(tmp_path,
                                                                           monkeypatch):
    """One test (the runs build on each other, and one worker should build them once)."""
    teacher, guided, prog = (str(tmp_path / n) for n in ("teacher", "guided", "progressive"))
    train(_config(), teacher)

    # The teacher is restored from its model item alone, and no optimizer is built for it.
    items = []
    restore = checkpoint.Checkpointer.restore

    def recording_restore(self, step=None, *, target, **kw):
        items.append(sorted(target))
        return restore(self, step, target=target, **kw)

    def no_optimizer(*args, **kwargs):
        raise AssertionError("an optimizer was built to load the teacher")

    with monkeypatch.context() as m:
        m.setattr(checkpoint.Checkpointer, "restore", recording_restore)
        m.setattr(train_job, "make_optimizer", no_optimizer)
        spec, _ = spec_for_data(_guided_config(teacher))
        load_teacher(spec, _guided_config(teacher))
    assert items == [["model"]]

    # Stage one: every teacher weight has its place in the student; the w embedding is the
    # student's own; training moved the weights.
    assert distill(_guided_config(teacher), guided)["step"] == 2
    flat_t = _flat(_params(_config(), teacher, None))
    flat_s = _flat(_params(_guided_config(teacher), guided, None))
    assert set(flat_t) < set(flat_s) and any("w_out" in k for k in set(flat_s) - set(flat_t))
    assert any(float(np.max(np.abs(flat_s[k] - flat_t[k]))) > 0 for k in flat_t)

    # Stage two: two rounds (2 steps, then 1), each round's student listed with its checkpoint.
    config = _progressive_config(guided)
    summary = distill(config, prog)
    assert summary["step"] == 4 and summary["stopped"] == "finished"
    rounds = summary["objective"]["rounds"]
    assert [(r["student_steps"], r["checkpoint_step"]) for r in rounds] == [(2, 2), (1, 4)]

    # A run killed after its step-2 checkpoint (the round switch) and started again ends
    # bit-identical.
    killed = str(tmp_path / "killed")
    shutil.copytree(prog, killed)
    for step in ("3", "4"):
        shutil.rmtree(os.path.join(killed, "checkpoints", step))
    assert distill(config, killed)["step"] == 4
    jax.tree.map(np.testing.assert_array_equal, _params(config, killed, 4),
                 _params(config, prog, 4))

    # The sampling job samples the one-step student at a guidance scale, one call per sample.
    config.sample.update(dict(steps=1, num_samples=6, shard_size=6, out_name="one_step"))
    config.guidance.scale = 2.0
    out = sample_job.sample_job(config, prog)
    imgs, _, proto = load_samples(out["out_dir"])
    assert imgs.shape == (6, 8, 8, 1) and proto["nfe"] == 1
    assert proto["network_evaluations_per_sample"] == 1
    assert json.dumps(proto)

    # CTRL: the teacher's null condition is the pretrained unconditional model; the fine-tuned
    # run moves its weights, and a run killed after its first checkpoint resumes bit-identical.
    ctrl, ctrl_killed = str(tmp_path / "ctrl"), str(tmp_path / "ctrl_killed")
    monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path / "cache"))
    assert distill(_ctrl_config(teacher), ctrl)["step"] == 2
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                         _params(_config(), ctrl, 2), _params(_config(), teacher, None))
    assert max(jax.tree.leaves(moved)) > 0
    shutil.copytree(ctrl, ctrl_killed)
    shutil.rmtree(os.path.join(ctrl_killed, "checkpoints", "2"))
    assert distill(_ctrl_config(teacher), ctrl_killed)["step"] == 2
    jax.tree.map(np.testing.assert_array_equal, _params(_config(), ctrl_killed, 2),
                 _params(_config(), ctrl, 2))

    # A student network that is not the teacher's is refused, naming the field, before any
    # file is written.
    wrong = _guided_config(teacher)
    wrong.model.base_channels = 16
    with pytest.raises(ConfigError, match="config.model.base_channels: the student has 16"):
        distill(wrong, str(tmp_path / "wrong"))
    assert not os.path.exists(tmp_path / "wrong")


def _flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}
