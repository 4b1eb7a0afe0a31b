"""Tests for jaxdiff.models: shapes, zero-init, conditioning, dropout, jit, configs, sizes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.denoiser import NNXApply
from jaxdiff.models import (NETWORKS, build_model, default_dit_config, default_unet1d_config,
                            default_unet_config, layers)
from jaxdiff.models.dit import FREQ_DIM, DiTBlock
from jaxdiff.models.unet import Downsample, UNet

K = 10  # classes in the tests; index K is the null token
SHAPE = (8, 8, 1)
SHAPE1D = (16, 2)  # (L, C) signals for the 1-D U-Net


def tiny_config(name, **overrides):
    if name == "unet":
        cfg = default_unet_config()
        cfg.update(dict(base_channels=8, num_groups=4, num_heads=2, channel_mult=(1, 2),
                        attn_resolutions=(4,)))
    elif name == "unet1d":
        cfg = default_unet1d_config()
        cfg.update(dict(base_channels=8, num_groups=4, num_heads=2, channel_mult=(1, 2),
                        attn_resolutions=(8,)))
    else:
        cfg = default_dit_config()
        cfg.update(dict(hidden_size=16, num_heads=2, mlp_ratio=2.0, depth=2, patch_size=2))
    cfg.update(overrides)
    return cfg


@functools.lru_cache(maxsize=None)
def fresh(name, shape=SHAPE, **overrides):
    """(graphdef, params) of a freshly initialised tiny network on ``shape`` (8x8x1) with K
    classes.

    The tests initialise with an 'unsafe_rbg' key: threefry initialisers compile once per
    parameter shape, which dominates a CPU test's time; the architecture code is the same."""
    rngs = nnx.Rngs(jax.random.key(0, impl="unsafe_rbg"))
    return nnx.split(build_model(tiny_config(name, **overrides), shape, K, rngs))


@functools.lru_cache(maxsize=None)
def random_net(name, shape=SHAPE, num_classes=K, **overrides):
    """(graphdef, params) with every parameter drawn N(0, 0.1^2) (no zero-initialised layer
    stays zero), built abstractly so that no initialiser runs."""
    cfg = tiny_config(name, **overrides)
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: build_model(cfg, shape, num_classes, nnx.Rngs(0))))
    rng = np.random.default_rng(1)
    return graphdef, jax.tree.map(
        lambda p: jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype), state)


@functools.partial(jax.jit, static_argnums=0)
def apply(graphdef, state, x, c_noise, cond, dropout_key=None):
    return nnx.merge(graphdef, state)(x, c_noise, cond, dropout_key=dropout_key)


def inputs(shape=SHAPE, same_rows=False):
    """x: (2, *shape) (two copies of one image when same_rows), t: (2,)."""
    x = jax.random.normal(jax.random.key(0), (1 if same_rows else 2,) + shape)
    return jnp.broadcast_to(x, (2,) + shape), jnp.array([0.3, 0.6])


def n_params(state):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state))


def rows_differ(out):
    return not np.allclose(out[0], out[1], atol=1e-6)


# ------------------------------------------------------------------------------------------------
# shapes and initialisation
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["unet", "dit"])
def test_fresh_network_outputs_exactly_zero(name):
    graphdef, state = fresh(name)
    x, t = inputs()
    out = apply(graphdef, state, x, t, jnp.array([0, K]))
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert jnp.all(out == 0.0)  # zero-initialised output layer
    out = apply(graphdef, random_net(name)[1], x, t, jnp.array([0, K]))
    assert float(jnp.abs(out).max()) > 0.0  # ... and only because of it


@pytest.mark.parametrize("name", ["unet", "dit"])
@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3)])
def test_output_shape(name, shape):
    graphdef, state = random_net(name, shape=shape)
    x, t = inputs(shape)
    out = apply(graphdef, state, x, t, jnp.array([0, K]))
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and rows_differ(out)


def test_pool_resampling_and_rectangular_images_trace():
    # shape-level checks only (jax.eval_shape traces without compiling)
    for name, shape, overrides in [("unet", (8, 8, 1), dict(resample="pool")),
                                   ("unet", (16, 8, 2), {}), ("dit", (16, 8, 2), {})]:
        graphdef, state = random_net(name, shape=shape, **overrides)
        x, t = inputs(shape)
        out = jax.eval_shape(apply, graphdef, state, x, t, None)
        assert out.shape == x.shape and out.dtype == jnp.float32
    down = nnx.merge(*random_net("unet", resample="pool")).down[1]
    assert isinstance(down, Downsample) and down.conv is None  # parameter-free pooling


def test_state_is_float32_params_only():
    for name in ("unet", "dit"):
        _, state = random_net(name, dtype="bfloat16")
        variables = jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))
        assert variables and all(type(v) is nnx.Param for v in variables)
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state))


@functools.partial(jax.jit, static_argnums=0)
def apply_block(graphdef, state, tokens, c):
    return nnx.merge(graphdef, state)(tokens, c, None)


def test_dit_blocks_are_identity_at_init():
    net = nnx.merge(*fresh("dit"))
    tokens = jax.random.normal(jax.random.key(3), (2, 16, 16))
    c = jax.random.normal(jax.random.key(4), (2, 16))
    assert len(net.blocks) == 2
    for block in net.blocks:
        assert isinstance(block, DiTBlock)
        np.testing.assert_array_equal(apply_block(*nnx.split(block), tokens, c), tokens)
    moved = nnx.merge(*random_net("dit")).blocks[0]  # not the identity once trained
    assert not np.allclose(apply_block(*nnx.split(moved), tokens, c), tokens)


# ------------------------------------------------------------------------------------------------
# conditioning
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["unet", "dit"])
def test_class_and_noise_conditioning_reach_the_output(name):
    graphdef, state = random_net(name)
    x, t = inputs(same_rows=True)
    assert rows_differ(apply(graphdef, state, x, t, jnp.array([0, 1])))   # class vs class
    assert rows_differ(apply(graphdef, state, x, t, jnp.array([0, K])))   # class vs null
    assert rows_differ(apply(graphdef, state, x, t, jnp.array([3, 3])))   # noise level
    assert not rows_differ(apply(graphdef, state, x, t[:1].repeat(2), jnp.array([3, 3])))


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_cond_none_is_the_null_token(name):
    net = nnx.merge(*random_net(name))
    t = jnp.array([0.3, 0.6])
    np.testing.assert_array_equal(net.embed(t, None), net.embed(t, jnp.array([K, K])))
    assert not np.allclose(net.embed(t, None), net.embed(t, jnp.array([0, 0])))


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_continuous_conditioning(name):
    graphdef, state = random_net(name, num_classes=0, cond_dim=3)
    x, t = inputs(same_rows=True)
    t = t.at[1].set(t[0])
    cond = jnp.stack([jnp.zeros(3), jnp.ones(3)])
    net = nnx.merge(graphdef, state)
    assert rows_differ(net.embed(t, cond))
    np.testing.assert_array_equal(net.embed(t, None), net.embed(t, jnp.zeros((2, 3))))
    if name == "dit":
        assert rows_differ(apply(graphdef, state, x, t, cond))
    else:  # same embedding module as the DiT; trace only (a U-Net compile is ~3 s of CPU)
        out = jax.eval_shape(apply, graphdef, state, x, t, cond)
        assert out.shape == x.shape and out.dtype == jnp.float32
    with pytest.raises(ValueError, match="cond must be float"):
        net(x, t, jnp.array([0, 1]))


def test_bad_call_inputs_raise():
    net = nnx.merge(*random_net("dit"))
    x, t = inputs()
    with pytest.raises(ValueError, match="cond must be int"):
        net(x, t, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="cond must be int"):
        net(x, t, jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="x must have shape"):
        net(jnp.zeros((2, 4, 4, 1)), t)
    with pytest.raises(ValueError, match="c_noise"):
        net(x, jnp.zeros((3,)))


# ------------------------------------------------------------------------------------------------
# dropout, dtype and the jit boundary
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["unet", "dit"])
def test_dropout_is_a_pure_function_of_the_key(name):
    g0, state = random_net(name)
    g5, state5 = random_net(name, dropout=0.5)
    jax.tree.map(np.testing.assert_array_equal, state, state5)  # same parameters
    x, t = inputs()
    cond = jnp.array([1, 2])
    # rbg keys compile much faster than threefry on CPU; dropout code is the same for both
    k1, k2 = jax.random.key(7, impl="unsafe_rbg"), jax.random.key(8, impl="unsafe_rbg")
    base = apply(g0, state, x, t, cond)
    # no key: deterministic, and exactly the dropout = 0 network
    np.testing.assert_array_equal(apply(g5, state, x, t, cond), base)
    # a key with rate 0.5: changes the output, reproducibly for the same key
    d1 = apply(g5, state, x, t, cond, k1)
    assert not np.allclose(d1, base)
    np.testing.assert_array_equal(d1, apply(g5, state, x, t, cond, k1))
    assert not np.allclose(d1, apply(g5, state, x, t, cond, k2))


def test_split_jit_merge_equals_eager():
    # (the DiT only: an eager U-Net call compiles every op separately, ~10 s of test time)
    graphdef, state = random_net("dit")
    x, t = inputs()
    cond = jnp.array([3, K])
    eager = nnx.merge(graphdef, state)(x, t, cond)
    assert float(jnp.abs(eager).max()) > 0.0
    np.testing.assert_allclose(apply(graphdef, state, x, t, cond), eager, rtol=1e-5, atol=1e-5)
    # the Denoiser's apply_fn (jaxdiff.denoiser.NNXApply) under jit
    jitted = jax.jit(NNXApply(graphdef))(state, x, t, cond)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_returns_float32_close_to_float32():
    g32, state = random_net("dit")
    g16, _ = random_net("dit", dtype="bfloat16")
    x, t = inputs()
    out32 = apply(g32, state, x, t, jnp.array([1, 2]))
    out16 = apply(g16, state, x, t, jnp.array([1, 2]))
    assert out16.dtype == jnp.float32
    assert not np.array_equal(out16, out32)  # the compute dtype really changed
    np.testing.assert_allclose(out16, out32, atol=0.05 * float(jnp.abs(out32).max()))


# ------------------------------------------------------------------------------------------------
# configs and sizes
# ------------------------------------------------------------------------------------------------

def _set(**kw):
    return lambda cfg: cfg.update(kw)


@pytest.mark.parametrize("name, mutate, data_shape, num_classes, match", [
    # the library's networks, plus the test-only one when tests/plugins registered it
    ("unet", _set(name="foo"), (8, 8, 1), K, r"config.model.name: unknown network 'foo'; "
                                              r"choose one of \['dit', ('toy_mlp', )?'unet', "
                                              r"'unet1d'\]"),
    ("unet", _set(channel_mult=()), (8, 8, 1), K, "config.model.channel_mult must be non-empty"),
    ("unet", _set(channel_mult=(1, 2, 2, 2, 2)), (8, 8, 1), K, "config.model.channel_mult"),
    ("unet", _set(num_groups=3), (8, 8, 1), K, "config.model.num_groups"),
    ("unet", _set(num_heads=3), (8, 8, 1), K, "config.model.num_heads"),
    ("unet", _set(base_channels=0), (8, 8, 1), K, "config.model.base_channels"),
    ("unet", _set(resample="bilinear"), (8, 8, 1), K, "config.model.resample"),
    ("unet", _set(dropout=1.0), (8, 8, 1), K, "config.model.dropout"),
    ("unet", _set(dtype="float16"), (8, 8, 1), K, "config.model.dtype"),
    ("unet", _set(cond_dim=4), (8, 8, 1), K, "config.model.cond_dim"),
    ("unet", _set(noise_scale=0.0), (8, 8, 1), K, "config.model.noise_scale"),
    ("unet", lambda cfg: cfg.__setattr__("num_head", 2), (8, 8, 1), K,
     "config.model.num_head: unknown field"),
    ("unet", lambda cfg: cfg.__delattr__("num_res_blocks"), (8, 8, 1), K,
     "config.model.num_res_blocks is missing"),
    ("unet", _set(), (8, 8), K, "data_shape"),
    ("unet", _set(), (8, 8, 1), -1, "num_classes"),
    ("dit", _set(patch_size=3), (8, 8, 1), K, "config.model.patch_size"),
    ("dit", _set(hidden_size=18), (8, 8, 1), K, "config.model.hidden_size"),
    ("dit", _set(num_heads=3), (8, 8, 1), K, "config.model.num_heads"),
    ("dit", _set(depth=0), (8, 8, 1), K, "config.model.depth"),
    ("dit", _set(mlp_ratio=0.0), (8, 8, 1), K, "config.model.mlp_ratio"),
    ("dit", _set(), (16, 2), K, r"data_shape must be \(H, W, C\)"),
    ("dit", lambda cfg: cfg.__setattr__("base_channels", 8), (8, 8, 1), K,
     "config.model.base_channels: unknown field for network 'dit'"),
    ("unet1d", _set(), (8, 8, 1), K, r"data_shape must be \(L, C\)"),
    ("unet1d", _set(), (0, 2), K, "data_shape"),
    ("unet1d", _set(kernel_size=4), SHAPE1D, K, "config.model.kernel_size must be odd"),
    ("unet1d", _set(kernel_size=0), SHAPE1D, K, "config.model.kernel_size"),
    ("unet1d", _set(channel_mult=()), SHAPE1D, K, "config.model.channel_mult must be non-empty"),
    ("unet1d", _set(channel_mult=(1, 2, 2, 2, 2, 2)), SHAPE1D, K, "config.model.channel_mult"),
    ("unet1d", _set(num_groups=3), SHAPE1D, K, "config.model.num_groups"),
    ("unet1d", _set(num_heads=3), SHAPE1D, K, "config.model.num_heads"),
    ("unet1d", _set(attn_resolutions=(0,)), SHAPE1D, K, "config.model.attn_resolutions"),
    ("unet1d", _set(resample="linear"), SHAPE1D, K, "config.model.resample"),
    ("unet1d", _set(dropout=-0.1), SHAPE1D, K, "config.model.dropout"),
    ("unet1d", _set(dtype="float64"), SHAPE1D, K, "config.model.dtype"),
    ("unet1d", lambda cfg: cfg.__setattr__("patch_size", 2), SHAPE1D, K,
     "config.model.patch_size: unknown field"),
    ("unet1d", lambda cfg: cfg.__delattr__("kernel_size"), SHAPE1D, K,
     "config.model.kernel_size is missing"),
])
def test_bad_config_raises_naming_the_field(name, mutate, data_shape, num_classes, match):
    cfg = tiny_config(name)
    mutate(cfg)
    with pytest.raises(ValueError, match=match):
        build_model(cfg, data_shape, num_classes, nnx.Rngs(0))


def test_default_configs_build():
    for cfg, shape in ((default_unet_config(), (8, 8, 1)), (default_dit_config(), (8, 8, 1)),
                       (default_unet1d_config(), (64, 2))):
        abstract = nnx.eval_shape(lambda: build_model(cfg, shape, K, nnx.Rngs(0)))
        assert n_params(nnx.state(abstract)) > 0


def test_registry_entries_and_defaults():
    # the library's networks (tests/plugins may have registered its test-only one after them)
    assert [n for n in NETWORKS if n != "toy_mlp"] == ["dit", "unet", "unet1d"]
    assert "unet1d" in NETWORKS and "foo" not in NETWORKS
    for name, defaults in (("unet", default_unet_config), ("dit", default_dit_config),
                           ("unet1d", default_unet1d_config)):
        assert NETWORKS.default_config(name) == defaults()
        assert NETWORKS.default_config(name).name == name
        assert NETWORKS.get(name) is NETWORKS[name] and callable(NETWORKS[name])


def dit_block_params(d, m):
    """qkv (d x 3d + 3d) + proj (d^2 + d) + fc1 (d m + m) + fc2 (m d + d) + adaLN (d x 6d + 6d)."""
    return 10 * d * d + 11 * d + 2 * d * m + m


def test_dit_parameter_count_matches_formula():
    d, m, depth, p, c = 16, 32, 2, 2, 1
    graphdef, state = random_net("dit")
    net = nnx.merge(graphdef, state)
    assert n_params(nnx.state(net.blocks[0])) == dit_block_params(d, m)
    patch_dim = p * p * c
    expected = (patch_dim * d + d                                     # patch embedding
                + FREQ_DIM * d + d + d * d + d + (K + 1) * d          # noise MLP + class table
                + depth * dit_block_params(d, m)
                + 2 * d * d + 2 * d + d * patch_dim + patch_dim)      # final adaLN + linear
    assert n_params(state) == expected


def test_unet_parameter_count_is_stable():
    # Regression value for tiny_config('unet') on 8x8x1 with K = 10 classes; a change means the
    # architecture changed (update deliberately).
    _, state = random_net("unet")
    assert n_params(state) == UNET_TINY_PARAMS


UNET_TINY_PARAMS = 48545


def _random_affine(norm, key):
    k1, k2 = jax.random.split(key)
    norm.scale.set_value(jax.random.normal(k1, norm.scale.shape))
    norm.bias.set_value(jax.random.normal(k2, norm.bias.shape))


@pytest.mark.parametrize("shape,groups", [((3, 5, 7, 64), 32), ((2, 6, 48), 4), ((2, 4, 4, 8), 8)])
def test_group_norm_equals_flax_group_norm_values_and_gradients(shape, groups):
    """jaxdiff's channels-last GroupNorm computes the same function as nnx.GroupNorm (Wu & He
    2018), with the same parameters, for values and for gradients in x and in the parameters."""
    x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.5
    ours = layers.GroupNorm(shape[-1], groups)
    ref = nnx.GroupNorm(shape[-1], groups, rngs=nnx.Rngs(0))
    _random_affine(ref, jax.random.key(1))
    ours.scale.set_value(ref.scale.get_value())
    ours.bias.set_value(ref.bias.get_value())
    assert (jax.tree.map(jnp.shape, nnx.state(ours, nnx.Param))
            == jax.tree.map(jnp.shape, nnx.state(ref, nnx.Param)))  # checkpoints carry over
    np.testing.assert_allclose(ours(x), ref(x), atol=2e-5)
    np.testing.assert_allclose(jnp.std(ours(x)[..., :shape[-1] // groups]), 1.0, atol=0.5)

    def loss(m, x):
        return jnp.sum(jnp.sin(m(x)) * jnp.arange(shape[-1]))

    gx_ours, gx_ref = jax.grad(loss, argnums=1)(ours, x), jax.grad(loss, argnums=1)(ref, x)
    np.testing.assert_allclose(gx_ours, gx_ref, atol=1e-4)
    gp_ours, gp_ref = nnx.grad(loss)(ours, x), nnx.grad(loss)(ref, x)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(gp_ours[name].get_value(), gp_ref[name].get_value(),
                                   rtol=1e-4, atol=1e-3)


def test_group_norm_modulation_is_adagn_and_keeps_dtype():
    """mod_scale / mod_shift fold ADM's AdaGN, GN(x) * (1 + s) + b, into the normalisation; a
    bfloat16 input stays bfloat16 (statistics in float32) and non-divisible widths are refused."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
    s, b = jax.random.normal(jax.random.key(1), (2, 2, 16))
    plain = layers.GroupNorm(16, 4, use_scale=False, use_bias=False)
    np.testing.assert_allclose(plain(x, mod_scale=s, mod_shift=b),
                               layers.modulate(plain(x), b, s), atol=1e-5)
    np.testing.assert_allclose(plain(x, mod_shift=b), plain(x) + b[:, None, None], atol=1e-6)
    y16 = plain(x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), plain(x), atol=0.05)
    with pytest.raises(ValueError, match="not divisible"):
        layers.GroupNorm(12, 8)
    with pytest.raises(ValueError, match="divisible by 4 groups"):
        layers.group_norm(jnp.ones((2, 4, 10)), 4, 1e-6)


# ------------------------------------------------------------------------------------------------
# the 1-D U-Net (signals (B, L, C))
# ------------------------------------------------------------------------------------------------

def test_unet1d_fresh_is_zero_and_maps_signals_to_signals():
    graphdef, state = fresh("unet1d", shape=SHAPE1D)
    x, t = inputs(SHAPE1D)
    out = apply(graphdef, state, x, t, jnp.array([0, K]))
    assert out.shape == x.shape == (2,) + SHAPE1D and out.dtype == jnp.float32
    assert jnp.all(out == 0.0)  # zero-initialised output conv
    out = apply(graphdef, random_net("unet1d", shape=SHAPE1D)[1], x, t, jnp.array([0, K]))
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and rows_differ(out)


def test_unet1d_conditioning_and_null_token():
    graphdef, state = random_net("unet1d", shape=SHAPE1D)
    net = nnx.merge(graphdef, state)
    x, t = inputs(SHAPE1D, same_rows=True)
    assert rows_differ(apply(graphdef, state, x, t, jnp.array([0, 1])))   # class vs class
    assert rows_differ(apply(graphdef, state, x, t, jnp.array([0, K])))   # class vs null
    assert rows_differ(apply(graphdef, state, x, t, jnp.array([3, 3])))   # noise level
    # cond None is the null token K, in the embedding and through the whole network
    np.testing.assert_array_equal(net.embed(t, None), net.embed(t, jnp.array([K, K])))
    np.testing.assert_allclose(apply(graphdef, state, x, t, None),
                               apply(graphdef, state, x, t, jnp.array([K, K])), atol=1e-6)
    with pytest.raises(ValueError, match="cond must be int"):
        net(x, t, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 16, 2\)"):
        net(jnp.zeros((2, 8, 2)), t)


def test_unet1d_continuous_conditioning_traces():
    graphdef, state = random_net("unet1d", shape=SHAPE1D, num_classes=0, cond_dim=3)
    x, t = inputs(SHAPE1D)
    cond = jnp.stack([jnp.zeros(3), jnp.ones(3)])
    net = nnx.merge(graphdef, state)
    assert rows_differ(net.embed(t.at[1].set(t[0]), cond))
    out = jax.eval_shape(apply, graphdef, state, x, t, cond)
    assert out.shape == x.shape and out.dtype == jnp.float32


def test_unet1d_dropout_is_a_pure_function_of_the_key():
    g0, state = random_net("unet1d", shape=SHAPE1D)
    g5, state5 = random_net("unet1d", shape=SHAPE1D, dropout=0.5)
    jax.tree.map(np.testing.assert_array_equal, state, state5)  # same parameters
    x, t = inputs(SHAPE1D)
    cond = jnp.array([1, 2])
    k1, k2 = jax.random.key(7, impl="unsafe_rbg"), jax.random.key(8, impl="unsafe_rbg")
    base = apply(g0, state, x, t, cond)
    np.testing.assert_array_equal(apply(g5, state, x, t, cond), base)  # no key: no dropout
    d1 = apply(g5, state, x, t, cond, k1)
    assert not np.allclose(d1, base)
    np.testing.assert_array_equal(d1, apply(g5, state, x, t, cond, k1))
    assert not np.allclose(d1, apply(g5, state, x, t, cond, k2))


def test_unet1d_pool_resampling_and_default_config_trace():
    graphdef, state = random_net("unet1d", shape=SHAPE1D, resample="pool")
    x, t = inputs(SHAPE1D)
    out = jax.eval_shape(apply, graphdef, state, x, t, None)
    assert out.shape == x.shape and out.dtype == jnp.float32
    down = nnx.merge(graphdef, state).down[1]
    assert isinstance(down, Downsample) and down.conv is None  # parameter-free pooling
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: build_model(default_unet1d_config(), (64, 2), 4, nnx.Rngs(0))))
    x = jax.ShapeDtypeStruct((3, 64, 2), jnp.float32)
    out = jax.eval_shape(apply, graphdef, state, x, jnp.ones(3), jnp.array([0, 1, 4]))
    assert out.shape == (3, 64, 2) and out.dtype == jnp.float32


@pytest.mark.parametrize("resample", ["conv", "pool"])
def test_unet_is_rank_generic_volumes_trace(resample):
    # the shared UNet on (D, H, W, C) volumes: 3-D taps, all three axes resampled, attention
    # over the D * H * W positions (shape-level only: jax.eval_shape traces without compiling)
    shape = (4, 8, 4, 2)
    net = nnx.eval_shape(lambda: UNet(
        data_shape=shape, num_classes=K, base_channels=8, channel_mult=(1, 2),
        num_res_blocks=1, attn_resolutions=(2,), num_heads=2, dropout=0.0, num_groups=4,
        resample=resample, kernel_size=3, cond_dim=0, noise_scale=1000.0, dtype=jnp.float32,
        rngs=nnx.Rngs(0)))
    assert net.conv_in.kernel.shape == (3, 3, 3, 2, 8)
    assert net.down[2].res.skip.kernel.shape == (1, 1, 1, 8, 16)
    assert net.down[2].attn is not None  # size 2 along D after one downsampling
    graphdef, state = nnx.split(net)
    x, t = inputs(shape)
    out = jax.eval_shape(apply, graphdef, state, x, t, jnp.array([0, K]))
    assert out.shape == x.shape and out.dtype == jnp.float32
