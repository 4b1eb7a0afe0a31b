"""Every registered network honours the network contract (jaxdiff.models docstring).

Parametrised over ``NETWORKS``, so a new registration is tested without editing this file.  Each
network runs at ``defaults()`` updated with its registration's ``test_overrides`` on an example
of shape ``test_shape`` (both from the registration meta; (8, 8, 1) when it names no shape):

  * output shape and dtype equal the input's (float32), with and without jit (chex.variants),
    and the two agree;
  * batch-size invariance: example 0 alone equals example 0 inside a batch of 3;
  * the null token (index K) is accepted, cond=None means the null token, and real classes
    change the output;
  * its defaults() build at test_shape, and a bad config field is rejected with a message that
    starts with ``config.model.<field>`` (an unknown field, a common field, and the
    registration's ``test_bad_fields``).

Parameters are drawn N(0, 0.1^2) (no layer stays zero-initialised) on an abstractly built
network, so no initialiser runs.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from flax import nnx

from jaxdiff.models import NETWORKS, build_model
from tests.plugins import toy_method  # noqa: F401  (registers the test-only network)

K = 3  # classes; index K is the null token
NAMES = tuple((name, name) for name in sorted(NETWORKS))
TOL = dict(rtol=2e-5, atol=2e-5)


def example_shape_of(name):
    return tuple(NETWORKS.entry(name).meta.get("test_shape", (8, 8, 1)))


def tiny_config(name):
    cfg = NETWORKS.default_config(name)
    cfg.update(NETWORKS.entry(name).meta.get("test_overrides", {}))
    return cfg


@functools.lru_cache(maxsize=None)
def random_net(name):
    """(graphdef, params) of the tiny network with every parameter N(0, 0.1^2)."""
    cfg = tiny_config(name)
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: build_model(cfg, example_shape_of(name), K, nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    return graphdef, jax.tree.map(
        lambda p: jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype), state)


def forward(graphdef, state, x, c_noise, cond):
    """The network as a function of (params, inputs), not jitted."""
    return nnx.merge(graphdef, state)(x, c_noise, cond)


apply = jax.jit(forward, static_argnums=0)


def batch(name):
    """x (3, *test_shape) float32, c_noise (3,), cond (3,) int: the null token K, then real
    classes 1 and 0."""
    x = jax.random.normal(jax.random.key(0), (3,) + example_shape_of(name), jnp.float32)
    return x, jnp.array([0.2, 0.5, 0.9], jnp.float32), jnp.array([K, 1, 0], jnp.int32)


@functools.lru_cache(maxsize=None)
def reference_output(name):
    """The jitted output on ``batch(name)`` (computed once per network)."""
    graphdef, state = random_net(name)
    return np.asarray(apply(graphdef, state, *batch(name)))


class NetworkConformanceTest(chex.TestCase):

    def test_every_network_is_parametrised(self):
        assert {n for n, _ in NAMES} == set(NETWORKS) and len(NAMES) >= 3

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMES)
    def test_output_shape_dtype_and_jit_agreement(self, name):
        graphdef, state = random_net(name)
        x, t, cond = batch(name)
        out = self.variant(forward, static_argnums=0)(graphdef, state, x, t, cond)
        chex.assert_shape(out, x.shape)
        chex.assert_type(out, x.dtype)
        chex.assert_tree_all_finite(out)
        np.testing.assert_allclose(out, reference_output(name), **TOL)
        assert not np.allclose(out[0], out[2])  # rows differ: the output is not trivial

    @parameterized.named_parameters(*NAMES)
    def test_batch_size_invariance_and_cond_none(self, name):
        # example 0 alone with cond=None equals example 0 of the batch with cond K: batch-size
        # invariance and "None is the null token" in one compile (CPU compiles dominate here)
        graphdef, state = random_net(name)
        x, t, _ = batch(name)
        alone = apply(graphdef, state, x[:1], t[:1], None)
        chex.assert_shape(alone, (1,) + example_shape_of(name))
        chex.assert_type(alone, jnp.float32)
        np.testing.assert_allclose(alone[0], reference_output(name)[0], **TOL)

    @parameterized.named_parameters(*NAMES)
    def test_null_token(self, name):
        graphdef, state = random_net(name)
        x, t, _ = batch(name)
        with_null = apply(graphdef, state, x, t, jnp.full((3,), K, jnp.int32))
        np.testing.assert_allclose(with_null[0], reference_output(name)[0], **TOL)
        for row in (1, 2):  # real classes 1 and 0 give other outputs than the null token
            assert not np.allclose(with_null[row], reference_output(name)[row], atol=1e-4)

    @parameterized.named_parameters(*NAMES)
    def test_registration_and_bad_fields(self, name):
        entry = NETWORKS.entry(name)
        assert callable(entry.obj) and entry.defaults is not None and entry.check is not None
        assert NETWORKS.default_config(name).name == name
        shape = example_shape_of(name)
        abstract = nnx.eval_shape(
            lambda: build_model(NETWORKS.default_config(name), shape, K, nnx.Rngs(0)))
        assert jax.tree.leaves(nnx.state(abstract, nnx.Param))  # the defaults build

        cases = {"dropout": 1.0, "dtype": "float16", "noise_scale": 0.0}
        cases.update(entry.meta.get("test_bad_fields", {}))
        for field, value in cases.items():
            cfg = tiny_config(name)
            cfg[field] = value
            with self.assertRaises(ValueError) as raised:
                build_model(cfg, shape, K, nnx.Rngs(0))
            assert str(raised.exception).startswith(f"config.model.{field}"), (
                field, str(raised.exception))
        cfg = tiny_config(name)
        cfg.not_a_field = 1
        with self.assertRaises(ValueError) as raised:
            build_model(cfg, shape, K, nnx.Rngs(0))
        assert str(raised.exception).startswith("config.model.not_a_field: unknown field")
