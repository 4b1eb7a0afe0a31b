"""Conformance of every registered sampler: a sampler registered later gets these checks for free.

All runs: the exact GMM oracle on the 2-D toy mixture, EDM schedule, a 6-step Karras grid, batch 5,
class-conditional (cond = index mod classes), from a fixed initial state.  Per sampler:

  * output shape (B, 2), float32, finite, under ``jax.jit`` and without (op by op,
    ``jax.disable_jit``), the two agreeing to rounding;
  * batch invariance: example i is identical whether drawn in a batch of 5 or of 3 (indices);
  * partial solves: 1 -> t_m then t_m -> 0 (``Grid.split``, the carry passed back) equals one
    solve over the joined grid, with the same NFE; a carry-less restart differs exactly when the
    sampler declares a history or randomness (so the equality is not vacuous);
  * options: an unknown name and NaN or out-of-range values are rejected with a one-line error
    before anything compiles; numeric options are traced (new values never recompile).

One program is compiled per sampler, an outer jit holding the joined solve, the batch-3 draw and
the two segments (plus ``sample``'s own program for samplers with numeric options); the other
runs reuse them or run op by op (``jax.disable_jit``), which keeps the file fast on a CPU.
"""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules
from jaxdiff.errors import ConfigError
from jaxdiff.toy import gmm as G

GMM = G.toy_mixture_2d()
EDM = schedules.EDM()
ORACLE = G.oracle_denoiser(GMM, EDM)
KEY = jax.random.key(3)
B, STEPS, SPLIT = 5, 6, 2
GRID = schedules.sampling_grid(EDM, STEPS, "karras")
FIRST, SECOND = GRID.split(SPLIT)
# the initial state (noise at t = 1, alpha = 1), given rather than drawn: the driver's initial
# noise is the same code for every sampler (tests/test_samplers.py checks it per example), and
# leaving its generator out of these programs halves their compile time
X_START = EDM.sigma_max * jax.random.normal(jax.random.key(4), (B, 2))
NAMES = sorted(samplers.SAMPLERS)

# options that exercise a sampler's randomness (its defaults otherwise); the heun_sde window
# [0.05, 50] holds grid levels on both sides of the split
EXERCISE = {"ddim": {"eta": 0.5},
            "heun_sde": {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}}
# another valid value for every numeric (traced) option
ALTERNATIVE = {"eta": 0.25, "s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 0.9}
# bad values that a sampler's own check must reject: (options, regex the message must match)
BAD = {
    "ddim": [({"eta": 1.5}, "eta")],
    "ddpm": [({"eta": -0.1}, "eta")],
    "heun_sde": [({"s_churn": -1.0}, "s_churn"), ({"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmin"),
                 ({"s_noise": -1.0}, "s_noise"), ({"s_churn": math.inf}, "s_churn")],
    "unipc": [({"order": 4}, "order"), ({"order": 2.5}, "order"),
              ({"lower_order_final": "yes"}, "lower_order_final")],
    "dpmpp_2m": [({"lower_order_final": 1}, "lower_order_final")],
    "evodiff": [({"adaptive": 0}, "adaptive"), ({"lower_order_final": "no"}, "lower_order_final")],
    "dpmpp_3m": [({"form": "taylr"}, "form"), ({"lower_order_final": None}, "lower_order_final")],
    "ipndm": [({"max_order": 0}, "max_order"), ({"max_order": True}, "max_order")],
}


def _sample(name: str, batch: int = B, indices=None, key=KEY, **kwargs) -> samplers.SampleOutput:
    """``sample`` on examples ``indices`` (default arange(batch)), starting from their rows of
    X_START at the grid's first point unless ``x_start`` is given."""
    idx = jnp.arange(batch) if indices is None else jnp.asarray(indices)
    kwargs.setdefault("grid", GRID)
    kwargs.setdefault("x_start", X_START[idx])
    options = {**EXERCISE.get(name, {}), **kwargs}
    return samplers.sample(ORACLE, key, (batch, 2), sampler=name, indices=idx,
                           cond=idx % GMM.num_classes, **options)


def _split(name: str, key=KEY) -> tuple[samplers.SampleOutput, samplers.SampleOutput]:
    """The solve of ``joined`` in two segments: 1 -> t_m (told the whole solve's length), then
    t_m -> 0 continued from the first segment's state and carry."""
    first = _sample(name, key=key, grid=FIRST, total_steps=STEPS)
    second = _sample(name, key=key, grid=SECOND, x_start=first.x, carry=first.carry)
    return first, second


@functools.lru_cache(maxsize=None)
def under_jit(name: str) -> dict:
    """Inside one outer ``jax.jit`` with a traced key (one program, to keep compiles few): the
    joined solve, examples ROWS drawn as a batch of 3, and the two segments."""
    nfe = {}

    def bundle(key):
        whole = _sample(name, key=key)
        small = _sample(name, key=key, batch=len(ROWS), indices=jnp.array(ROWS))
        first, second = _split(name, key)
        nfe.update(joined=whole.nfe, first=first.nfe, second=second.nfe)
        assert whole.clean_end and not first.clean_end and second.clean_end
        assert whole.carry is None and second.carry is None
        return dict(joined=whole.x, small=small.x, first=first.x, carry=first.carry,
                    second=second.x)

    out = jax.jit(bundle)(KEY)
    return dict(out, nfe=nfe)


@functools.lru_cache(maxsize=None)
def eager(name: str) -> samplers.SampleOutput:
    """The joined solve without jit, op by op (``jax.disable_jit``)."""
    with jax.disable_jit():
        return _sample(name)


ROWS = [4, 1, 3]


def _float_leaves(tree) -> list:
    return [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry(name):
    spec = samplers.SAMPLERS[name]
    assert isinstance(spec, samplers.SamplerSpec) and spec.name == name
    assert samplers.get_sampler(name) is spec
    entry = samplers.SAMPLERS.entry(name)
    assert entry.obj is spec and entry.meta["stochastic"] == spec.stochastic
    assert dict(samplers.SAMPLERS.default_config(name)) == dict(spec.defaults)
    samplers.SAMPLERS.check(name, samplers.SAMPLERS.default_config(name))
    assert spec.count_nfe(STEPS) == samplers.nfe_of(name, STEPS) == spec.nfe(STEPS)
    with pytest.raises(ConfigError, match="unknown sampler"):
        samplers.get_sampler(name + "_x")


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype_under_jit_and_without(name):
    jitted = under_jit(name)
    chex.assert_shape(jitted["joined"], (B, 2))
    chex.assert_type(jitted["joined"], jnp.float32)
    chex.assert_tree_all_finite(jitted["joined"])
    assert jitted["nfe"]["joined"] == samplers.nfe_of(name, STEPS)
    out = eager(name)
    assert out.clean_end and out.carry is None and out.x0 is out.x
    assert out.nfe == samplers.nfe_of(name, STEPS)
    chex.assert_shape(out.x, (B, 2))
    chex.assert_type(out.x, jnp.float32)
    # op by op the rounding differs from a compiled program's, nothing else
    chex.assert_trees_all_close(out.x, jitted["joined"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_example_does_not_depend_on_its_batch(name):
    jitted = under_jit(name)
    chex.assert_shape(jitted["small"], (len(ROWS), 2))
    chex.assert_trees_all_equal(jitted["small"], jitted["joined"][jnp.array(ROWS)])


@pytest.mark.parametrize("name", NAMES)
def test_partial_solves_join_to_one_solve(name):
    r = under_jit(name)
    whole, first, carry, second, nfe = r["joined"], r["first"], r["carry"], r["second"], r["nfe"]
    chex.assert_shape([first, second], (B, 2))
    chex.assert_type([first, second], jnp.float32)
    assert isinstance(carry, samplers.SolverCarry)
    chex.assert_type(_float_leaves(carry), jnp.float32)
    assert int(carry.step) == SPLIT and int(carry.total_steps) == STEPS
    assert nfe["first"] + nfe["second"] == nfe["joined"] == samplers.nfe_of(name, STEPS)
    # the middle state is far from the end (the segments did real work) ...
    assert float(jnp.max(jnp.abs(first - whole))) > 0.1
    # ... and the continued solve lands on the joined one (float32 rounding)
    chex.assert_trees_all_close(second, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_restart_without_carry(name):
    """A second segment without the carry starts afresh: no history, step noise from
    step_offset 0.  That changes the result exactly when the sampler has a history or draws
    noise; with step_offset and total_steps given, a sampler without history is continued.
    (Op by op, so nothing new compiles; compared with the op-by-op joined solve.)"""
    spec = samplers.SAMPLERS[name]
    whole, middle = eager(name).x, under_jit(name)["first"]
    with jax.disable_jit():
        restart = _sample(name, grid=SECOND, x_start=middle).x
        offset = None if spec.solve else _sample(name, grid=SECOND, x_start=middle,
                                                 step_offset=SPLIT, total_steps=STEPS).x
    if spec.solve is None and not spec.stochastic:
        chex.assert_trees_all_close(restart, whole, rtol=1e-4, atol=1e-4)
    else:
        gap = float(jnp.max(jnp.abs(restart - whole)))
        assert gap > 1e-2, (name, gap)
    if offset is not None:
        chex.assert_trees_all_close(offset, whole, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_are_rejected_before_compiling(name):
    spec = samplers.SAMPLERS[name]
    before = samplers.compile_count()
    with pytest.raises(ValueError, match="no option") as err:
        _sample(name, not_an_option=1.0)
    assert "\n" not in str(err.value)
    for key in spec.traced_options:
        with pytest.raises(ValueError, match=key):
            _sample(name, **{key: float("nan")})
    if spec.check is not None:
        assert name in BAD, f"list bad option values for {name!r} in BAD"
    for options, match in BAD.get(name, []):
        with pytest.raises(ValueError, match=match) as err:
            _sample(name, **options)
        assert "\n" not in str(err.value)
        with pytest.raises(ValueError, match=match):
            samplers.SAMPLERS.check(name, options)
        with pytest.raises(ValueError, match=match):
            samplers.check_options(name, options)
    samplers.check_options(name, dict(spec.defaults))
    with pytest.raises(ValueError, match="no option"):
        samplers.check_options(name, {"not_an_option": 1.0})
    assert samplers.compile_count() == before


@pytest.mark.parametrize("name", [n for n in NAMES if samplers.SAMPLERS[n].traced_options])
def test_numeric_options_do_not_recompile(name):
    """Through ``sample``'s own compiled program: new values of every numeric option reuse it."""
    spec = samplers.SAMPLERS[name]
    base = _sample(name)
    chex.assert_trees_all_close(base.x, under_jit(name)["joined"], rtol=1e-5, atol=1e-5)
    before = samplers.compile_count()
    for key in spec.traced_options:
        assert key in ALTERNATIVE, f"give option {key!r} an ALTERNATIVE value"
        out = _sample(name, **{key: ALTERNATIVE[key]}).x
        chex.assert_shape(out, (B, 2))
        chex.assert_tree_all_finite(out)
    assert samplers.compile_count() == before
    if name in EXERCISE:   # a new value changes the samples
        key = spec.traced_options[0]
        assert not np.allclose(_sample(name, **{key: ALTERNATIVE[key]}).x, base.x)
