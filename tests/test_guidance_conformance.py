"""Conformance: every registered guidance transform (``jaxdiff.guidance.GUIDANCE``, plus the
test-only kit of tests/plugins/toy_method.py) built from its default config section passes the
same checks, so a newly registered transform gets them for free:

* its own check accepts its defaults and rejects a non-number in each float field;
* output shape and dtype equal the input's; jit and no-jit agree;
* batch-size invariance: example 0 alone equals example 0 in a batch of 3;
* changing a float field's value does not recompile a jitted function of the transform (a
  ``switches`` field, whose zero builds another program, among nonzero values).
"""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.denoiser import DenoiserBase
from jaxdiff.errors import ConfigError
from jaxdiff.guidance import GUIDANCE, build_guidance, check_guidance, guidance_config
from jaxdiff.guidance.cfg import CFG
from jaxdiff.toy import gmm as G
from jaxdiff.config import ensure_registered
from tests.plugins import toy_method  # noqa: F401  (registers the test-only transform)

ensure_registered()  # every package that registers a transform (jaxdiff.distill too)

MIX = G.toy_mixture_2d(num_classes=3)
DEN = G.oracle_denoiser(MIX, schedules.EDM())


@dataclasses.dataclass(frozen=True)
class _TakesW(DenoiserBase):
    """For a transform registered with ``inner_takes_w`` (a guided-distilled student's): the
    exact model whose condition carries a guidance weight, CFG of the oracle at s = w + 1."""

    inner: DenoiserBase

    @property
    def schedule(self):
        return self.inner.schedule

    def x0(self, x, t, cond=None):
        return CFG(self.inner, scale=cond["w"] + 1.0, null=MIX.num_classes)(x, t, cond["cond"])


jax.tree_util.register_dataclass(_TakesW, data_fields=["inner"], meta_fields=[])


def _inner(name):
    return _TakesW(DEN) if GUIDANCE.entry(name).meta.get("inner_takes_w") else DEN


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The part of a run spec a guidance builder reads, plus the in-memory models a builder
    that names another model (autoguidance's bad model, a guiding classifier) is given instead
    of loading a checkpoint."""

    num_classes: int = MIX.num_classes
    example_shape: tuple = (MIX.dim,)

    @property
    def null(self):
        return self.num_classes

    @property
    def config(self):
        """The run's sampling section (a transform tied to the sampling grid reads it)."""
        import ml_collections

        return ml_collections.ConfigDict(dict(sample=dict(sampler="ddim", steps=10,
                                                          grid="karras", options={}),
                                              model=dict(guidance_embedding=True)))

    def load_denoiser(self, workdir, step):
        """A weaker model of the same data: the oracle of the mixture with wider components."""
        del workdir, step
        return G.oracle_denoiser(dataclasses.replace(MIX, stds=2.0 * MIX.stds), schedules.EDM())

    def load_classifier(self, path):
        """(logits_fn, params, num_classes): the mixture's exact clean-data classifier."""
        del path
        return G.CleanClassifier(), MIX, MIX.num_classes


def _numeric_fields(section):
    """The float fields: the traced knobs.  Int fields pick structure (a checkpoint step), are
    not traced, and ConfigDict's type safety already refuses a float in them."""
    return [k for k, v in section.items() if k != "name" and isinstance(v, float)]


def _evaluate(d, x, t, y):
    """One evaluation of ``d``; a stateful Denoiser from its initial state."""
    if d.stateful:
        return d.x0_step(x, t, y, d.init_state(x.shape))[0]
    return d(x, t, y)


def _inputs(b):
    x = jax.random.normal(jax.random.key(1), (b, 2)) * 3.0
    t = jnp.full((b,), 0.4)
    y = jnp.arange(b, dtype=jnp.int32) % MIX.num_classes
    return x, t, y


@pytest.mark.parametrize("name", sorted(GUIDANCE))
def test_defaults_pass_and_bad_values_are_named(name):
    section = guidance_config(name)
    check_guidance(section)
    for field in _numeric_fields(section):
        bad = guidance_config(name)
        bad[field] = float("nan")
        with pytest.raises(ConfigError, match=f"config.guidance.{field}"):
            check_guidance(bad)


@pytest.mark.parametrize("name", sorted(GUIDANCE))
def test_shape_dtype_jit_and_batch_invariance(name):
    den = build_guidance(_inner(name), guidance_config(name), _Spec())
    x, t, y = _inputs(3)

    outs = [fn(den, x, t, y) for fn in (jax.jit(lambda d, x, t, y: d(x, t, y)),
                                        lambda d, x, t, y: d(x, t, y))]
    for out in outs:
        chex.assert_shape(out, x.shape)
        chex.assert_type(out, jnp.float32)
    chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    alone = den(x[:1], t[:1], y[:1])
    chex.assert_trees_all_close(alone[0], outs[1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(GUIDANCE))
def test_numeric_fields_are_traced(name):
    section = guidance_config(name)
    fields = _numeric_fields(section)
    if not fields:
        pytest.skip(f"{name} has no numeric field")
    traces = []

    @jax.jit
    def call(d, x, t, y):
        traces.append(1)
        return _evaluate(d, x, t, y)

    x, t, y = _inputs(3)
    outs = []
    # a switch field (zero and nonzero build different programs) is bumped from a nonzero value
    switches = GUIDANCE.entry(name).meta.get("switches", ())
    for bump in (0.0, 0.25):
        s = guidance_config(name, **{f: -0.5 for f in switches})
        for field in fields:
            s[field] = float(s[field]) + bump if field != "t_hi" else float(s[field])
        outs.append(call(build_guidance(_inner(name), s, _Spec()), x, t, y))
    assert len(traces) == 1, f"{name}: a new value of {fields} recompiled"
    assert not np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
