"""Conformance: every registered training objective (``jaxdiff.objectives.OBJECTIVES``, plus the
test-only two-network objective of tests/plugins/toy_method.py) passes the same checks with its
default config section on a tiny 1-D network, so a newly registered objective gets them free:

* its own check accepts its defaults and rejects NaN in each numeric field, naming it;
* ``init`` gives a pytree; ``loss`` is a finite float32 scalar with finite, non-zero gradients
  with respect to the main parameters, the same value with and without jit, and a function of
  the key;
* ``update_extra`` and ``host_update`` keep the extra state's structure, shapes and dtypes.
"""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from jaxdiff import config as C
from jaxdiff.errors import ConfigError
from jaxdiff.jobs.spec import build_spec
from jaxdiff.models import NETWORKS
from jaxdiff.objectives import OBJECTIVES, build_objective, objective_config
from tests.plugins import toy_method  # noqa: F401  (registers the test-only objective)

C.ensure_registered()  # every package that registers objectives (jaxdiff.distill too)
SHAPE = (16, 2)
NUM_CLASSES = 3


def _config(name):
    from jaxdiff.data import default_data_config
    from jaxdiff.models import default_unet1d_config

    model = default_unet1d_config()
    model.base_channels = 8
    model.channel_mult = (1,)
    model.attn_resolutions = ()
    model.num_groups = 4
    model.update(OBJECTIVES.entry(name).meta.get("test_model_overrides", {}))
    config = C.base_config(default_data_config("signals1d"), model)
    config.objective = objective_config(name)
    for dotted, value in OBJECTIVES.entry(name).meta.get("test_config", {}).items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


class _TeacherSpec:
    """The run's spec, handing a distillation its teacher from memory: a freshly initialised
    network of the run's config without the fields only students have."""

    def __init__(self, spec, config, name):
        self._spec = spec
        teacher_config = config.copy_and_resolve_references()
        for field in OBJECTIVES.entry(name).meta.get("student_fields", ()):
            if "." not in field:   # a network field (a diffusion field does not change it)
                teacher_config.model[field] = NETWORKS.default_config(config.model.name)[field]
        self._teacher = build_spec(teacher_config, NUM_CLASSES, SHAPE)

    def __getattr__(self, name):
        return getattr(self._spec, name)

    def classifier_logits(self, x0):
        """A fixed classifier of the run's examples (a reward for objectives that need one)."""
        w = jax.random.normal(jax.random.key(11), (x0[0].size, max(NUM_CLASSES, 1)))
        return x0.reshape(x0.shape[0], -1) @ w

    def load_denoiser(self, workdir, step):
        del workdir, step
        return self._teacher.denoiser(self._teacher.init_params())


def _numeric_fields(section):
    return [k for k, v in section.items()
            if k != "name" and isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.fixture(scope="module", params=sorted(OBJECTIVES))
def built(request):
    config = _config(request.param)
    spec = build_spec(config, NUM_CLASSES, SHAPE)
    if OBJECTIVES.entry(request.param).meta.get("family") == "distill":
        spec = _TeacherSpec(spec, config, request.param)
    objective = build_objective(spec, config)
    params = objective.initial_params(spec.init_params())
    extra = objective.init(params, jax.random.key(3))
    # An objective whose loss is zero at initialisation by design (SIM: fake score = teacher)
    # names the extra state to move off that point, so its gradients can be checked.
    for item in OBJECTIVES.entry(request.param).meta.get("test_perturb_extra", ()):
        leaves, tree = jax.tree.flatten(extra[item])
        keys = jax.random.split(jax.random.key(8), len(leaves))
        extra = dict(extra, **{item: jax.tree.unflatten(tree, [
            leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
            for leaf, k in zip(leaves, keys)])})
    batch = dict(x=jax.random.normal(jax.random.key(4), (4,) + SHAPE),
                 label=jnp.arange(4, dtype=jnp.int32) % NUM_CLASSES)
    return request.param, config, objective, params, extra, batch


def test_defaults_pass_and_bad_values_are_named(built):
    name, config, *_ = built
    C.validate(config, num_classes=NUM_CLASSES, example_shape=SHAPE)
    for field in _numeric_fields(config.objective):
        bad = _config(name)
        # A fresh section, so that an int field can hold the float NaN.
        bad.objective = ml_collections.ConfigDict(dict(bad.objective.to_dict(),
                                                       **{field: float("nan")}))
        with pytest.raises(ConfigError, match=f"config.objective.{field}"):
            C.validate(bad)


def test_loss_is_a_finite_scalar_with_gradients_and_jit_agrees(built):
    _, _, objective, params, extra, batch = built
    key, step = jax.random.key(5), jnp.int32(0)
    fn = jax.jit(jax.value_and_grad(objective.loss, has_aux=True))
    (loss, metrics), grads = fn(params, extra, batch, key, step)
    loss_eager, _ = objective.loss(params, extra, batch, key, step)  # forward only: fast
    chex.assert_shape(loss, ())
    chex.assert_type(loss, jnp.float32)
    chex.assert_tree_all_finite((loss, grads))
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0
    chex.assert_trees_all_close(loss, loss_eager, rtol=2e-5, atol=1e-6)
    assert all(jnp.ndim(v) == 0 for v in jax.tree.leaves(metrics))
    (other, _), _ = fn(params, extra, batch, jax.random.key(6), step)
    assert float(other) != float(loss)  # the loss draws its randomness from the key


def test_extra_state_keeps_its_structure(built):
    _, _, objective, params, extra, batch = built
    new, metrics = jax.jit(objective.update_extra)(extra, params, batch, jax.random.key(7),
                                                   jnp.int32(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, extra)
    chex.assert_tree_all_finite(new)
    host = objective.host_update(new, 1, {k: float(v) for k, v in metrics.items()})
    chex.assert_trees_all_equal_shapes_and_dtypes(host, extra)
