"""Per-parameter learning-rate multipliers (``config.optim.lr_multipliers``)."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdiff.config import default_optim_config, load_config_file, validate
from jaxdiff.errors import ConfigError
from jaxdiff.jobs.train import make_optimizer
from jaxdiff.optim import check_lr_multipliers, lr_factors, path_components


def _params():
    k = jax.random.split(jax.random.key(0), 3)
    return {"class_table": {"embedding": jax.random.normal(k[0], (11, 4))},
            "blocks": [{"dense": {"kernel": jax.random.normal(k[1], (4, 4))}},
                       {"class_table": {"embedding": jax.random.normal(k[2], (11, 4))}}]}


def _optim(**multipliers):
    o = default_optim_config()
    o.weight_decay = 0.01
    o.warmup_steps = 0
    o.grad_clip = 0.0          # global-norm clipping would couple the leaves' steps
    o.lr_multipliers = ml_collections.ConfigDict(multipliers)
    return o


def _updates(optim_cfg, params, steps=3):
    opt, _ = make_optimizer(optim_cfg, 10)
    state = opt.init(params)
    out = []
    for i in range(steps):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1)), params)
        u, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out, params


def test_path_components_and_factors():
    params = _params()
    paths = [path_components(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert ("blocks", "1", "class_table", "embedding") in paths
    factors = lr_factors(params, {"class_table": 3.0, "1": 0.5})
    assert factors["class_table"]["embedding"] == 3.0
    assert factors["blocks"][0]["dense"]["kernel"] == 1.0
    assert factors["blocks"][1]["class_table"]["embedding"] == 1.5   # both apply: product


def test_multiplied_leaves_move_m_times_as_far_and_the_rest_as_without():
    params = _params()
    plain, _ = _updates(_optim(), params)
    scaled, _ = _updates(_optim(class_table=50.0), params)
    for u0, u1 in zip(plain, scaled):
        chex.assert_trees_all_equal_structs(u0, u1)
        np.testing.assert_array_equal(u1["blocks"][0]["dense"]["kernel"],
                                      u0["blocks"][0]["dense"]["kernel"])
        for got, ref in ((u1["class_table"]["embedding"], u0["class_table"]["embedding"]),
                         (u1["blocks"][1]["class_table"]["embedding"],
                          u0["blocks"][1]["class_table"]["embedding"])):
            # the gradients of steps 2-3 are taken at other parameters, so only step 1 is
            # exactly 50x; every step moves the table by about 50x as much
            assert float(jnp.max(jnp.abs(got))) > 20 * float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(scaled[0]["class_table"]["embedding"],
                               50.0 * plain[0]["class_table"]["embedding"], rtol=1e-6)


def test_multiplier_zero_freezes_the_leaf_weight_decay_included():
    params = _params()
    _, after = _updates(_optim(class_table=0.0), params)
    chex.assert_trees_all_equal(after["class_table"], params["class_table"])
    assert not np.array_equal(after["blocks"][0]["dense"]["kernel"],
                              params["blocks"][0]["dense"]["kernel"])


def test_bad_multipliers_fail_with_the_field():
    with pytest.raises(ConfigError, match=r"config.optim.lr_multipliers.clas_table: no "
                                          r"parameter path has a component 'clas_table'"):
        check_lr_multipliers(_params(), {"clas_table": 2.0})
    config = load_config_file("configs/mnist5k.py")
    config.optim.lr_multipliers = ml_collections.ConfigDict(dict(class_table=-1.0))
    with pytest.raises(ConfigError, match=r"config.optim.lr_multipliers.class_table: must be "
                                          r">= 0.0, got -1.0"):
        validate(config)
