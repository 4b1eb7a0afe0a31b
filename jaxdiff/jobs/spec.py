"""The run spec: what every job knows about a run, built once from its config and data.

``RunSpec`` holds the network definition (built abstractly with ``nnx.eval_shape``: no weights
are allocated until a job asks for them), the schedule, the parameterization, the classes and
the example shape.  From it:

  spec.init_params()                    freshly initialised parameters (training from scratch)
  spec.denoiser(params)                 the run's Denoiser
  spec.sampling_denoiser(params)        the Denoiser sampling uses (with early exit, if set)
  spec.guided(params)                   that Denoiser wrapped by ``config.guidance``
  restore_model(spec, workdir, step)    (parameters of ``config.sample.ema_index``, step) from
                                        the checkpoint's ``model`` item alone: no optimizer state
  load_denoiser(config, workdir)        (denoiser, step) for a trained workdir in one call
  load_other_denoiser(spec, workdir, ...)
                                        a second trained model for this run (autoguidance's
                                        bad model, T-Stitch's small one), its network and
                                        noise process read from its own ``config.json``

Checkpoints (``WORKDIR/checkpoints/<step>/``) hold two items: ``model`` = dict(params, ema) and
``train`` = dict(step, opt_state, rng, extra).  Jobs that only use a model restore ``model``.

``JOBS`` is the registry the command line reads: every job module registers
``run(config, workdir)`` under its mode name.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
from flax import nnx

from jaxdiff import parameterization as P
from jaxdiff import schedules
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.denoiser import Denoiser, NNXApply
from jaxdiff.errors import ConfigError, MissingInputError
from jaxdiff.registry import Registry

JOBS = Registry("job")
CHECKPOINT_ITEMS = ("model", "train")
OLD_LAYOUT_HINT = ("the layout of an earlier jaxdiff (one 'state' item); train again into a new "
                   "--workdir")


def register_job(name: str, preflight=None):
    """Registers ``run(config, workdir) -> dict`` as the job ``--mode=name``.

    ``preflight(config, workdir, earlier)`` (optional) checks, cheaply and before any job of
    the command runs, what this job will need (``earlier``: the modes that run before it in the
    same command, which may make its inputs); it raises a JaxdiffError naming the fix.
    """
    return JOBS.register(name, preflight=preflight)


def preflight(config, workdir: str, modes) -> None:
    """Runs every job's preflight check for the command ``--mode=<modes>``, in order."""
    for i, mode in enumerate(modes):
        check = JOBS.entry(mode).meta.get("preflight")
        if check is not None:
            check(config, workdir, tuple(modes[:i]))


def needs_checkpoint(config, workdir: str, earlier, step: int | None = None) -> None:
    """Preflight of the jobs that use a trained model: unless ``train`` or ``distill`` runs
    first, a checkpoint (``step``, or any when None or < 0) is there and was trained with this
    config's model fields."""
    from jaxdiff.jobs import rundir

    if "train" in earlier or "distill" in earlier:
        return
    steps = rundir.checkpoint_steps(workdir)
    if not steps:
        checkpoint_dir(workdir)
        raise MissingInputError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: "
                                f"train first (--mode=train with the same --workdir)")
    if step is not None and step >= 0 and step not in steps:
        raise MissingInputError(f"config.sample.checkpoint_step={step}: no such checkpoint in "
                                f"{os.path.join(workdir, 'checkpoints')}; available steps: "
                                f"{steps}")
    rundir.check_compatible(workdir, config, "restore")


def build_schedule(diffusion_cfg) -> schedules.Schedule:
    try:
        return schedules.get_schedule(diffusion_cfg.schedule, **dict(diffusion_cfg.schedule_kwargs))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.diffusion.schedule: {e}") from None


def build_parameterization(diffusion_cfg) -> P.Parameterization:
    try:
        return P.Parameterization(diffusion_cfg.parameterization, float(diffusion_cfg.sigma_data))
    except ValueError as e:
        raise ConfigError(f"config.diffusion.parameterization: {e}") from None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything static about a run.

    config: the experiment config.
    graphdef: the network's NNX graph definition (static).
    abstract_params: pytree of ``jax.ShapeDtypeStruct``, the network parameters' layout.
    schedule, param: the noise process and the parameterization.
    num_classes: K (0: unconditional); class index K is the null condition.
    example_shape: shape of one example, any rank ((H, W, C) images, (L, C) signals).
    kind: what an example is ('image', 'signal', 'vector', 'tokens', 'array'; see
      ``jaxdiff.data.source``): images get uint8 shards and preview grids.
    """

    config: Any
    graphdef: Any
    abstract_params: Any
    schedule: schedules.Schedule
    param: P.Parameterization
    num_classes: int
    example_shape: tuple[int, ...]
    kind: str = "image"

    @property
    def null(self) -> int:
        """The null condition: class index ``num_classes``."""
        return int(self.num_classes)

    def condition(self, labels):
        """The network's condition for class labels (None for an unconditional model)."""
        return labels if self.num_classes > 0 else None

    def init_params(self):
        """Freshly initialised parameters from ``config.seed`` (a pure dict)."""
        net = _build_network(self.config, self.example_shape, self.num_classes)
        return nnx.to_pure_dict(nnx.split(net)[1])

    def denoiser(self, params) -> Denoiser:
        return Denoiser(NNXApply(self.graphdef), params, self.schedule, self.param)

    def sampling_denoiser(self, params, stitch: bool = True) -> Denoiser:
        """The Denoiser that sampling uses: the network's, with DeeDiff early exit when
        ``config.sample.exit_threshold`` > 0, after the smaller models of ``config.stitch``
        (T-Stitch) when it names any and ``stitch`` is True."""
        den = self.denoiser(params)
        threshold = float(self.config.sample.get("exit_threshold", 0.0))
        if threshold > 0:
            from jaxdiff.models.early_exit import early_exit_denoiser

            den = early_exit_denoiser(den, threshold)
        if stitch and "stitch" in self.config:
            from jaxdiff.combine.tstitch import stitch_from_config

            den = stitch_from_config(den, self)
        return den

    def guided(self, params, guidance_cfg=None, stitch: bool = True):
        """The sampling Denoiser wrapped by the guidance transform ``config.guidance`` (or the
        given section); ``stitch=False`` leaves out ``config.stitch`` (the training job's
        previews show the model being trained)."""
        from jaxdiff.guidance import build_guidance

        section = self.config.guidance if guidance_cfg is None else guidance_cfg
        return build_guidance(self.sampling_denoiser(params, stitch), section, self)


def _build_network(config, example_shape, num_classes):
    from jaxdiff.models import build_model

    return build_model(config.model, tuple(example_shape), int(num_classes),
                       rngs=nnx.Rngs(int(config.seed)))


def build_spec(config, num_classes: int, example_shape, kind: str | None = None) -> RunSpec:
    """The run spec for data with ``num_classes`` classes and examples of ``example_shape``
    (of ``kind``; default: inferred from a float32 example's rank); the network is built
    abstractly (no parameter is allocated)."""
    from jaxdiff.data.source import infer_kind

    abstract = nnx.eval_shape(lambda: _build_network(config, example_shape, num_classes))
    graphdef, state = nnx.split(abstract)
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                          nnx.to_pure_dict(state))
    return RunSpec(config=config, graphdef=graphdef, abstract_params=params,
                   schedule=build_schedule(config.diffusion),
                   param=build_parameterization(config.diffusion), num_classes=int(num_classes),
                   example_shape=tuple(int(d) for d in example_shape),
                   kind=kind or infer_kind(tuple(example_shape), "float32"))


def spec_for_data(config, split: str = "heldout"):
    """(RunSpec, source) for the dataset of ``config.data`` (its ``split``)."""
    from jaxdiff.data import get_source

    source = get_source(config.data, split)
    return build_spec(config, source.num_classes, source.example_shape, source.kind), source


def abstract_model(spec: RunSpec, num_ema: int | None = None) -> dict:
    """The ``model`` item's layout: dict(params, ema=(one per config.train.ema_decays))."""
    n = len(spec.config.train.ema_decays) if num_ema is None else num_ema
    return dict(params=spec.abstract_params, ema=tuple(spec.abstract_params for _ in range(n)))


def checkpoint_dir(workdir: str) -> str:
    """``workdir/checkpoints``; raises MissingInputError (naming the fix) when it is missing.
    Jobs call it before building their network, so a wrong --workdir fails at once."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise MissingInputError(f"no checkpoint directory {ckpt_dir}: train first "
                                f"(--mode=train with the same --workdir)")
    return ckpt_dir


def open_checkpoints(workdir: str, **kwargs) -> Checkpointer:
    """The run's Checkpointer (items ``model`` and ``train``; non-finite states are never
    saved, and an unreadable or non-finite newest checkpoint is moved aside for the next
    older one); a checkpoint of the earlier one-item layout raises CheckpointFormatError
    naming the fix."""
    return Checkpointer(os.path.join(workdir, "checkpoints"), items=CHECKPOINT_ITEMS,
                        layout_hint=OLD_LAYOUT_HINT, require_finite=True, **kwargs)


def restore_model(spec: RunSpec, workdir: str, step: int | None = None,
                  ema_index: int | None = None, shardings=None):
    """Restores the ``model`` item of ``workdir``'s checkpoint ``step`` (default: the latest).

    Returns (params, step): the EMA ``ema_index`` (default ``config.sample.ema_index``; -1 for
    the raw parameters) as a pure dict, and the checkpoint's step (with ``step`` None, the
    newest readable one: an unreadable newest checkpoint is moved aside, see
    ``Checkpointer``).  No optimizer state is read
    or allocated.  ``shardings``: optional pytree of shardings for the parameters.
    """
    checkpoint_dir(workdir)
    ckpt = open_checkpoints(workdir, async_save=False)
    try:
        target = abstract_model(spec)
        if shardings is not None:
            target = dict(params=_with_shardings(target["params"], shardings),
                          ema=tuple(_with_shardings(e, shardings) for e in target["ema"]))
        restored, _ = ckpt.restore(step=step, target=dict(model=target))
        chosen = ckpt.restored_step
    finally:
        ckpt.close()
    index = int(spec.config.sample.ema_index if ema_index is None else ema_index)
    model = restored["model"]
    return (model["params"] if index < 0 else model["ema"][index]), int(chosen)


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def load_denoiser(config, workdir: str, step: int | None = None, split: str = "heldout"):
    """(Denoiser of the trained model in ``workdir``, checkpoint step), without guidance."""
    spec, _ = spec_for_data(config, split)
    params, step = restore_model(spec, workdir, step)
    return spec.denoiser(params), step


def other_model_config(run_config, workdir: str, field: str):
    """The run's config with the network, diffusion and EMA sections of the model trained in
    ``workdir`` (from its ``config.json``; the run's own when there is none).  The dataset must be
    the run's: otherwise a ConfigError naming ``field`` (the config field that gave
    ``workdir``, e.g. 'guidance.bad_workdir')."""
    import json

    import ml_collections

    from jaxdiff.data import dataset_name

    path = os.path.join(workdir, "config.json")
    config = ml_collections.ConfigDict(run_config.to_dict())
    if not os.path.isfile(path):
        return config
    with open(path) as f:
        saved = json.load(f)
    theirs = dataset_name(ml_collections.ConfigDict(saved["data"]))
    ours = dataset_name(run_config.data)
    if theirs != ours:
        raise ConfigError(f"config.{field}: the model in {workdir} was trained on {theirs!r}, "
                          f"this run samples {ours!r}")
    model = saved["model"]
    try:  # fields added to jaxdiff after that model was trained, at their defaults
        from jaxdiff.models import NETWORKS

        model = dict(NETWORKS.default_config(model.get("name"), "model.name").to_dict(), **model)
    except ConfigError:
        pass
    config.model = ml_collections.ConfigDict(model)
    config.diffusion = ml_collections.ConfigDict(saved["diffusion"])
    config.train.ema_decays = tuple(saved["train"]["ema_decays"])
    return config


def load_other_denoiser(spec: RunSpec, workdir: str, step: int | None, field: str):
    """The Denoiser of a second trained model that this run uses, at checkpoint ``step`` (None:
    the latest), without guidance or early exit.

    A spec with a ``load_denoiser(workdir, step)`` method (a host program holding its models in
    memory, or a test) supplies it; otherwise the ``model`` item of ``workdir``'s checkpoint is
    restored with the network of ``other_model_config``.  ``field`` names the config field that
    gave ``workdir`` in the errors (an empty path, a missing checkpoint directory)."""
    loader = getattr(spec, "load_denoiser", None)
    if callable(loader):
        return loader(workdir, step)
    if not workdir:
        raise ConfigError(f"config.{field}: give the workdir of a trained model")
    checkpoint_dir(workdir)  # a wrong path fails before any data is read
    den, _ = load_denoiser(other_model_config(spec.config, workdir, field), workdir, step)
    return den
