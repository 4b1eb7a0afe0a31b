"""What every distillation shares: the ``config.distill`` section (the teacher), loading the
teacher, starting the student from its weights, and the truncated-SNR weight.

``config.distill``:
  teacher_workdir    the trained model being distilled (its ``config.json`` gives its network,
                     noise process and EMAs); only its checkpoint's ``model`` item is restored
  teacher_step       its checkpoint step (-1: the newest)

The student's network is the teacher's, except for the fields a method adds
(``config.model.guidance_embedding`` for a guided student): ``check_student`` names the first
other field that differs.  ``init_from_teacher`` copies every teacher weight into the student;
layers only the student has (the guidance-weight embedding) keep their initialisation, which
makes them start as no-ops.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff.config import number, path_string, register_section
from jaxdiff.errors import ConfigError, MissingInputError

Array = jax.Array
# The network fields a distillation may set on the student that its teacher lacks.
STUDENT_ONLY_FIELDS = ("guidance_embedding",)


def _defaults():
    return ml_collections.ConfigDict(dict(teacher_workdir="", teacher_step=-1))


def _check(section, config, **_):
    del config
    path_string(section.teacher_workdir, "distill.teacher_workdir")
    number(section.teacher_step, "distill.teacher_step", low=-1, integer=True)


register_section("distill", defaults=_defaults, check=_check)


def check_teacher_exists(config) -> None:
    """Raises MissingInputError naming ``config.distill.teacher_workdir`` when it is empty or
    holds no checkpoints (the distill job's preflight, before anything is built)."""
    workdir = config.distill.teacher_workdir
    if not workdir:
        raise MissingInputError("config.distill.teacher_workdir: give the workdir of the "
                                "trained model to distil")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise MissingInputError(f"config.distill.teacher_workdir: no checkpoint directory "
                                f"{os.path.join(workdir, 'checkpoints')}: train the teacher "
                                f"first (--mode=train with --workdir={workdir})")


def check_student(config, student_fields=STUDENT_ONLY_FIELDS) -> None:
    """Raises ConfigError naming the first ``config.model`` / ``config.diffusion`` field whose
    value differs from the teacher's (read from the teacher's ``config.json``; a teacher
    without one passes), other than ``student_fields`` (bare names are ``config.model``
    fields, 'diffusion.x' names a diffusion field); or another dataset."""
    from jaxdiff.jobs.spec import other_model_config

    workdir = config.distill.teacher_workdir
    if not workdir or not os.path.isfile(os.path.join(workdir, "config.json")):
        return
    teacher = other_model_config(config, workdir, "distill.teacher_workdir")
    skips = {"model": set(), "diffusion": set()}
    for name in student_fields:
        section, _, field = name.rpartition(".")
        skips[section or "model"].add(field)
    for section, skip in skips.items():
        ours, theirs = config[section].to_dict(), teacher[section].to_dict()
        for field in sorted(set(ours) | set(theirs)):
            if field in skip:
                continue
            a, b = ours.get(field, "<absent>"), theirs.get(field, "<absent>")
            if _plain(a) != _plain(b):
                raise ConfigError(
                    f"config.{section}.{field}: the student has {a!r}, the teacher in "
                    f"{workdir} {b!r}; a student starts from its teacher's weights and needs "
                    f"its network and noise process (set the field to the teacher's value)")


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def load_teacher(spec, config):
    """The teacher's Denoiser (EMA ``config.sample.ema_index`` of checkpoint
    ``config.distill.teacher_step``), restored from its ``model`` item alone: no optimizer
    state is read or allocated.  A spec with ``load_denoiser(workdir, step)`` supplies it
    instead (a host program holding the teacher in memory, or a test)."""
    from jaxdiff.jobs.spec import load_other_denoiser

    step = int(config.distill.teacher_step)
    return load_other_denoiser(spec, config.distill.teacher_workdir, None if step < 0 else step,
                               "distill.teacher_workdir")


def _paths(tree) -> dict:
    return {jax.tree_util.keystr(p): leaf
            for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def init_from_teacher(student_params, teacher_params):
    """The student's initial parameters: every teacher weight, at the same path; the
    student's own initialisation for the parameters the teacher lacks.

    Raises ConfigError when a teacher weight has no place in the student (another network) or
    another shape (another width, data shape or class count)."""
    teacher = _paths(teacher_params)
    student = _paths(student_params)
    for path, leaf in teacher.items():
        if path not in student:
            raise ConfigError(f"config.model: the teacher has a weight {path} the student "
                              f"lacks; distil into the teacher's network")
        if tuple(student[path].shape) != tuple(leaf.shape):
            raise ConfigError(f"config.model: the teacher's weight {path} has shape "
                              f"{tuple(leaf.shape)}, the student's {tuple(student[path].shape)} "
                              f"(another network width, data shape or class count)")

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        return jnp.asarray(teacher[key], leaf.dtype) if key in teacher else leaf

    return jax.tree_util.tree_map_with_path(pick, student_params)


def teacher_params_like(params, teacher_params):
    """The teacher's parameters cast leaf by leaf to the dtypes of ``params`` (the student's, of
    the same structure): the copy a distillation keeps in its extra state."""
    return jax.tree.map(lambda p, t: jnp.asarray(t, p.dtype), params, teacher_params)


def frozen(tree):
    """Parameters with no gradient (a network whose inputs still carry one)."""
    return jax.tree.map(jax.lax.stop_gradient, tree)


def truncated_snr_weight(alpha: Array, sigma: Array) -> Array:
    """max(SNR, 1) with SNR = alpha^2 / sigma^2, per example (Salimans & Ho 2022, Sec. 4:
    "truncated SNR" weighting of the x-space error); (B,) -> (B,)."""
    return jnp.maximum(alpha**2 / jnp.maximum(sigma, 1e-20) ** 2, 1.0)


def check_scale_range(section, prefix: str) -> None:
    """``scale_min`` <= ``scale_max``, both >= 0 (jaxdiff's CFG scale s; Meng et al.'s
    w = s - 1)."""
    number(section.scale_min, f"{prefix}.scale_min", low=0.0)
    number(section.scale_max, f"{prefix}.scale_max", low=0.0)
    if section.scale_min > section.scale_max:
        raise ConfigError(f"config.{prefix}.scale_min = {section.scale_min} is above "
                          f"scale_max = {section.scale_max} (the guidance scales drawn in "
                          f"training are U[scale_min, scale_max])")
