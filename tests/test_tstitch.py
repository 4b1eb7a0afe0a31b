"""T-Stitch (combine/tstitch.py): the endpoint identities, per-sample routing, the step-fraction
mapping, cost counting and the one-line errors.  The "large" model is the toy mixture's exact
denoiser and the "small" one the exact denoiser of a different mixture, so the two disagree
everywhere and any routing mistake shows."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import parameterization as P
from jaxdiff import samplers, schedules
from jaxdiff.combine import tstitch as T
from jaxdiff.denoiser import Denoiser
from jaxdiff.toy import gmm as G

SCHED = schedules.VPCosine()
LARGE = G.oracle_denoiser(G.toy_mixture_2d(), SCHED)
SMALL = G.oracle_denoiser(G.toy_mixture_2d(radius=1.5, std=0.4, seed=1), SCHED)
KEY = jax.random.key(0)
X_T = jax.random.normal(jax.random.key(1), (64, 2))
COND = jnp.arange(64) % 3


def _sample(den, sampler="dpmpp_2m", steps=10):
    return np.asarray(samplers.sample(den, KEY, (64, 2), sampler=sampler, steps=steps,
                                      grid="uniform_t", x_T=X_T, cond=COND).x0)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_fraction_0_is_the_large_model_and_1_the_small_one_bit_for_bit(sampler):
    large, small = _sample(LARGE, sampler), _sample(SMALL, sampler)
    assert np.abs(large - small).max() > 0.1
    np.testing.assert_array_equal(_sample(T.tstitch([SMALL, LARGE], [0.0, 1.0]), sampler), large)
    np.testing.assert_array_equal(_sample(T.tstitch([SMALL, LARGE], [1.0, 1.0]), sampler), small)
    mixed = _sample(T.tstitch([SMALL, LARGE], [0.4, 1.0]), sampler)
    assert np.abs(mixed - large).max() > 1e-3 and np.abs(mixed - small).max() > 1e-3


def test_a_batch_at_different_times_routes_each_sample():
    stitch = T.tstitch([SMALL, LARGE, SMALL], [0.3, 0.7, 1.0])
    t = jnp.linspace(0.02, 1.0, 64)
    x = jax.random.normal(jax.random.key(2), (64, 2))
    got = np.asarray(stitch(x, t, COND))
    small, large = np.asarray(SMALL(x, t, COND)), np.asarray(LARGE(x, t, COND))
    u = 1.0 - np.asarray(t)
    want = np.where(((u < 0.3) | (u >= 0.7))[:, None], small, large)
    chex.assert_shape(got, (64, 2))
    # each model runs inside its own lax.cond branch, a separately compiled computation, so
    # its rounding may differ from the standalone call's in the last bit
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(stitch.route(t)),
                                  (u >= 0.3).astype(int) + (u >= 0.7).astype(int))


def test_step_fractions_give_the_first_steps_to_the_first_model():
    grid = schedules.sampling_grid(SCHED, 10, "karras")
    for frac, first in [(0.0, 0), (0.4, 4), (0.55, 6), (1.0, 10)]:   # round(0.55 * 10) = 6
        stitch = T.tstitch([SMALL, LARGE], T.step_fractions(grid, [frac, 1.0]))
        which = np.asarray(stitch.route(grid.t[:10]))
        np.testing.assert_array_equal(which, (np.arange(10) >= first).astype(int))


def test_cost_counts_evaluations_per_model_and_flops():
    grid = schedules.sampling_grid(SCHED, 10, "uniform_t")
    stitch = T.tstitch([SMALL, LARGE], T.step_fractions(grid, [0.3, 1.0]))
    times = T.evaluation_times("heun", grid)
    assert len(times) == samplers.nfe_of("heun", 10)
    c = T.cost(stitch, times, X_T[:4], COND[:4])
    assert sum(c["nfe"]) == 19 and c["nfe"][0] == 3 + 2      # 3 steps and 2 corrections
    assert all(f > 0 for f in c["flops_per_eval"])
    assert c["flops"] == pytest.approx(sum(n * f for n, f in zip(c["nfe"], c["flops_per_eval"])))
    assert list(T.evaluation_times("dpmpp_2m", grid)) == list(np.asarray(grid.t[:10]))


def test_one_line_errors():
    eps_model = Denoiser(LARGE.apply_fn, LARGE.params, SCHED, P.Parameterization("eps"))
    cases = [
        (([SMALL, LARGE], [0.6, 0.4]), "non-decreasing"),
        (([SMALL, LARGE], [0.3, 0.9]), "must be 1"),
        (([SMALL, LARGE], [0.3]), "one per denoiser"),
        (([SMALL, LARGE], [-0.1, 1.0]), r"\[0, 1\]"),
        (([SMALL, G.oracle_denoiser(G.toy_mixture_2d(), schedules.EDM())], [0.5, 1.0]),
         "schedule"),
        (([SMALL, eps_model], [0.5, 1.0]), "parameterization"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            T.tstitch(*args)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------
# config.stitch
# ------------------------------------------------------------------------------------------------

def _stitch_config(workdirs, fractions, sampler="dpmpp_2m", steps=10):
    from jaxdiff.config import load_config_file
    from tests.helpers.cli import DIGITS

    config = load_config_file(DIGITS)
    config.stitch.workdirs, config.stitch.fractions = tuple(workdirs), tuple(fractions)
    config.sample.sampler, config.sample.steps, config.sample.grid = sampler, steps, "uniform_t"
    return config


@pytest.mark.parametrize("workdirs, fractions, match", [
    (("a",), (), r"config\.stitch\.fractions: give one cumulative step fraction per workdir"),
    (("a", "b"), (0.6, 0.3), r"config\.stitch\.fractions: fractions must be non-decreasing"),
    (("a",), (1.5,), r"config\.stitch\.fractions: fractions must lie in \[0, 1\]"),
    (("",), (0.4,), r"config\.stitch\.workdirs\[0\]: must be a workdir path"),
])
def test_stitch_section_errors_name_the_field(workdirs, fractions, match):
    from jaxdiff import config as C
    from jaxdiff.errors import ConfigError

    with pytest.raises(ConfigError, match=match) as err:
        C.validate(_stitch_config(workdirs, fractions))
    assert "\n" not in str(err.value)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What ``stitch_from_config`` reads of a RunSpec, with its models in memory."""

    config: object
    models: dict

    def load_denoiser(self, workdir, step):
        return self.models[workdir]


def test_stitch_from_config_is_the_stitch_at_the_steps_fractions():
    config = _stitch_config(("small",), (0.4,))
    stitched = T.stitch_from_config(LARGE, _Spec(config, {"small": SMALL}))
    grid = schedules.sampling_grid(SCHED, 10, "uniform_t")
    want = T.tstitch([SMALL, LARGE], T.step_fractions(grid, [0.4, 1.0]))
    assert stitched.fractions == want.fractions
    np.testing.assert_array_equal(_sample(stitched), _sample(want))
    assert T.evaluations_per_model(SCHED, config.sample, (0.4,)) == [4, 6]
    assert T.evaluations_per_model(SCHED, _stitch_config(("s",), (0.4,), "heun").sample,
                                   (0.4,)) == [4 + 3, 6 + 6]     # points and corrections
    # no workdirs: the run's model itself
    assert T.stitch_from_config(LARGE, _Spec(_stitch_config((), ()), {})) is LARGE


def test_stitch_from_config_refuses_another_schedule_or_parameterization():
    from jaxdiff.errors import ConfigError

    other = G.oracle_denoiser(G.toy_mixture_2d(), schedules.EDM())
    eps_model = Denoiser(SMALL.apply_fn, SMALL.params, SCHED, P.Parameterization("eps"))
    for model, what in ((other, "schedule"), (eps_model, "parameterization")):
        with pytest.raises(ConfigError, match=rf"config\.stitch\.workdirs\[0\]: the model in "
                                              rf"s has the {what}") as err:
            T.stitch_from_config(LARGE, _Spec(_stitch_config(("s",), (0.4,)), {"s": model}))
        assert "\n" not in str(err.value)
