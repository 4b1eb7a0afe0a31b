"""LoRA (models/lora.py), PPAP's time-routed expert bank (guidance/ppap.py) and the job that
trains it (jobs/train_guidance.py): exact identities against independent computations and the
mixture oracle's exact classifier guidance, bad input, and bit-exact resume of the job."""
import dataclasses
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.errors import ConfigError
from jaxdiff.guidance import (ClassifierGuidance, ExpertBank, NullCondition, build_guidance,
                              guidance_config)
from jaxdiff.guidance.ppap import (check_boundaries, default_boundaries, expert_index, ppap,
                                   single_expert)
from jaxdiff.models.lora import lora_for
from jaxdiff.toy import gmm as G

K = 3
MIX = G.toy_mixture_2d(num_classes=K)
SCHED = schedules.VPLinear()
UNCOND = G.oracle_denoiser(MIX, SCHED, conditional=False)
COND = G.oracle_denoiser(MIX, SCHED)


# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------

def _conv_params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return dict(conv=dict(kernel=jax.random.normal(k1, (3, 3, 4, 6)), bias=jnp.zeros(6)),
                head=dict(kernel=jax.random.normal(k2, (6, 2)), bias=jnp.ones(2)),
                norm=dict(scale=jax.random.normal(k3, (6,))))


def _conv_net(p, x):
    h = jax.lax.conv_general_dilated(x, p["conv"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = (h + p["conv"]["bias"]) * p["norm"]["scale"]
    return h.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


def test_lora_starts_at_the_base_and_is_the_conv_lora_of_the_paper():
    base = _conv_params(jax.random.key(0))
    lora = lora_for(base, rank=2, alpha=8.0, exclude=("head",))
    assert lora.targets == (("conv", "kernel"),)
    assert set(lora.free) == {("conv", "bias"), ("norm", "scale")}
    adapter = lora.init(base, jax.random.key(1))
    chex.assert_shape(adapter["a"][0], (3 * 3 * 4, 2))
    chex.assert_shape(adapter["b"][0], (2, 6))
    # B = 0: the adapted network is the base bit for bit
    chex.assert_trees_all_equal(lora.merge(base, adapter), base)
    # a trained adapter: the merged conv equals the base conv plus (alpha / r) times a (3, 3)
    # conv to r channels followed by a 1x1 conv to the output (computed separately)
    adapter["b"][0] = jax.random.normal(jax.random.key(2), (2, 6))
    adapter["free"][0] = adapter["free"][0] + 0.5
    merged = lora.merge(base, adapter)
    x = jax.random.normal(jax.random.key(3), (2, 5, 5, 4))
    conv = lambda z, w: jax.lax.conv_general_dilated(  # noqa: E731
        z, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    low = conv(conv(x, adapter["a"][0].reshape(3, 3, 4, 2)), adapter["b"][0].reshape(1, 1, 2, 6))
    np.testing.assert_allclose(conv(x, merged["conv"]["kernel"]),
                               conv(x, base["conv"]["kernel"]) + 4.0 * low, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(merged["conv"]["bias"], base["conv"]["bias"] + 0.5)
    chex.assert_trees_all_equal(merged["head"], base["head"])
    # gradients reach the adapter through the merge
    g = jax.grad(lambda a: _conv_net(lora.merge(base, a), x).sum())(adapter)
    assert float(jnp.abs(g["a"][0]).sum()) > 0 and float(jnp.abs(g["b"][0]).sum()) > 0


def test_lora_bad_input():
    base = _conv_params(jax.random.key(0))
    with pytest.raises(ValueError, match="rank"):
        lora_for(base, rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="no 'kernel'"):
        lora_for(dict(norm=base["norm"]), rank=2, alpha=1.0)
    lora = lora_for(base, rank=2, alpha=1.0)
    with pytest.raises(ValueError, match="rank"):
        lora.check(lora_for(base, rank=3, alpha=1.0).init(base, jax.random.key(0)))


# ------------------------------------------------------------------------------------------------
# the expert bank on the mixture oracle
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _FrozenTimeClassifier:
    """An expert that is the oracle's exact p(c | x_t) at the fixed time params['t']."""

    def __call__(self, params, x):
        t = jnp.broadcast_to(params["t"], x.shape[:1])
        alpha, sigma = SCHED.alpha_sigma(t)
        return params["gmm"].class_log_posterior(x, alpha, sigma)


BOUNDS = default_boundaries(4, SCHED.t_min, SCHED.t_max)
MIDS = [0.5 * (lo + hi) for lo, hi in zip(BOUNDS, BOUNDS[1:])]


def _exact_bank():
    """Four experts, expert k the exact noisy classifier at its range's middle time."""
    experts = dict(gmm=jax.tree.map(lambda a: jnp.stack([a] * 4), MIX),
                   t=jnp.asarray(MIDS, jnp.float32))
    return ExpertBank(_FrozenTimeClassifier(), None, BOUNDS), dict(base=None, experts=experts)


def test_experts_exact_on_their_ranges_are_exact_classifier_guidance():
    bank, params = _exact_bank()
    exact = ClassifierGuidance(UNCOND, G.OracleClassifier(SCHED), MIX, scale=2.5,
                               num_classes=K)
    guided = ppap(UNCOND, bank, params, num_classes=K, scale=2.5)
    call = jax.jit(lambda d, *a: d(*a))
    x = 2.0 * jax.random.normal(jax.random.key(0), (8, 2))
    y = jnp.arange(8, dtype=jnp.int32) % K
    # a batch spread over the four ranges (each example through its own expert) ...
    t = jnp.asarray(MIDS * 2, jnp.float32)
    np.testing.assert_array_equal(expert_index(t, BOUNDS), [0, 1, 2, 3] * 2)
    np.testing.assert_allclose(call(guided, x, t, y), call(exact, x, t, y), rtol=1e-4,
                               atol=1e-4)
    # ... and batches at one time (the shared expert once)
    for mid in MIDS:
        tm = jnp.full((8,), mid, jnp.float32)
        np.testing.assert_allclose(call(guided, x, tm, y), call(exact, x, tm, y), rtol=1e-4,
                                   atol=1e-4)
    # the guidance is not zero, so the comparison compares something
    assert not np.allclose(call(exact, x, t, y), UNCOND(x, t, y), atol=1e-3)


def test_one_expert_is_a_single_student_and_scale_zero_is_the_model():
    student = _FrozenTimeClassifier()
    p = dict(gmm=MIX, t=jnp.float32(0.3))
    bank = ExpertBank(student, None, default_boundaries(1, SCHED.t_min, SCHED.t_max))
    params = dict(base=None, experts=single_expert(p))
    x = jax.random.normal(jax.random.key(1), (6, 2))
    t = jnp.linspace(0.1, 0.9, 6)
    y = jnp.arange(6, dtype=jnp.int32) % K
    chex.assert_trees_all_equal(bank(params, x, t, y), jnp.take_along_axis(
        jax.nn.log_softmax(student(p, x)), y[:, None], axis=1)[:, 0])
    chex.assert_trees_all_equal(ppap(UNCOND, bank, params, num_classes=K, scale=0.0)(x, t, y),
                                UNCOND(x, t, y))
    # the null token is not guided
    null = jnp.full_like(y, K)
    chex.assert_trees_all_equal(ppap(COND, bank, params, num_classes=K, scale=4.0)(x, t, null),
                                COND(x, t, null))


def test_null_condition_guides_the_unconditional_half():
    x = jax.random.normal(jax.random.key(2), (6, 2))
    y = jnp.arange(6, dtype=jnp.int32) % K
    chex.assert_trees_all_equal(NullCondition(COND, K)(x, 0.4, y),
                                COND(x, 0.4, jnp.full_like(y, K)))


def test_expert_ranges_must_cover_the_schedule():
    assert check_boundaries((0.0, 0.5, 1.0), 0.001, 1.0) == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="do not cover"):
        check_boundaries((0.1, 0.5, 1.0), 0.001, 1.0)
    with pytest.raises(ValueError, match="do not cover"):
        check_boundaries((0.0, 0.5, 0.9), 0.001, 1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_boundaries((0.0, 0.6, 0.5, 1.0), 0.001, 1.0)


@dataclasses.dataclass(frozen=True)
class _Spec:
    classes_of_classifier: int = K
    num_classes: int = K

    @property
    def null(self):
        return self.num_classes

    def load_classifier(self, path):
        return G.CleanClassifier(), MIX, self.classes_of_classifier


def test_registered_ppap_without_experts_is_the_clean_classifier_on_x_t():
    den = build_guidance(UNCOND, guidance_config("ppap", scale=2.0), _Spec())
    x = jax.random.normal(jax.random.key(3), (4, 2))
    y = jnp.arange(4, dtype=jnp.int32) % K
    naive = ClassifierGuidance(UNCOND, lambda p, z, t, c: jnp.take_along_axis(
        jax.nn.log_softmax(G.CleanClassifier()(p, z)), c[:, None], axis=1)[:, 0], MIX,
        scale=2.0, num_classes=K)
    np.testing.assert_allclose(den(x, 0.5, y), naive(x, 0.5, y), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="4 classes"):
        build_guidance(UNCOND, guidance_config("ppap"), _Spec(classes_of_classifier=4))
    with pytest.raises(ConfigError, match="experts_dir"):
        build_guidance(UNCOND, guidance_config("ppap", experts_dir="/nonexistent"), _Spec())
    assert isinstance(build_guidance(COND, guidance_config("ppap", unconditional=True),
                                     _Spec()).inner, NullCondition)


# ------------------------------------------------------------------------------------------------
# the training job
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """A tiny digits diffusion checkpoint and a small clean classifier trained on digits."""
    from jaxdiff.classifier_train import train_classifier
    from jaxdiff.models.classifier import default_classifier_config
    from tests.sample_job_common import tiny_checkpoint, tiny_config

    root = tmp_path_factory.mktemp("ppap")
    wd = tiny_checkpoint(str(root / "run"), seed=0)
    cfg = tiny_config()
    arch = default_classifier_config()
    arch.channels, arch.feature_dim, arch.num_groups = (8, 16), 16, 4
    clf = str(root / "clf")
    train_classifier(cfg.data, clf, steps=10, batch_size=64, arch=arch, lr=5e-3)
    return cfg, wd, clf


def _job_config(cfg, clf, out, **fields):
    cfg = cfg.copy_and_resolve_references()
    cfg.guidance_train.update(dict(num_experts=2, lora_rank=2, steps=4, batch_size=8,
                                   checkpoint_every=2, eval_images=40, pool_size=24,
                                   pool_batch=12, pool_steps=2, classifier_dir=clf,
                                   out_dir=out), **fields)
    return cfg


def _template(directory):
    """The stacked experts' layout, rebuilt from the manifest as the guidance builder does."""
    from jaxdiff.classifier_train import load_classifier_weights
    from jaxdiff.guidance.ppap import bank_lora, experts_template, read_experts_manifest

    m = read_experts_manifest(directory)
    base = load_classifier_weights(m["classifier_dir"])
    return experts_template(base.params, bank_lora(base.params, m["lora"]), m["num_experts"])


def test_data_free_experts_resume_and_guide_the_model_through_the_config(digits_setup,
                                                                         tmp_path, capsys):
    """The distill target samples a pool from the model in the workdir and trains on it without
    labels; a run killed after its step-2 checkpoint and started again ends with the same
    experts, bit for bit; the registered ppap transform loads them and guides the model."""
    from jaxdiff.guidance.ppap import load_experts
    from jaxdiff.jobs.spec import restore_model, spec_for_data
    from jaxdiff.jobs.train_guidance import train_guidance

    cfg, wd, clf = digits_setup
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    m = train_guidance(_job_config(cfg, clf, straight), wd)
    assert m["target"] == "distill" and m["diffusion_checkpoint_step"] == 0
    assert len(m["noisy_heldout_accuracy"]["experts"]) == 2 and all(
        np.isfinite(m["final_losses"]))
    assert len(os.listdir(os.path.join(straight, "pool"))) == 2
    with open(os.path.join(straight, "experts.json")) as f:
        assert json.load(f)["classifier_sha256"] == m["classifier_sha256"]
    # a run killed after its step-2 checkpoint: the copy without checkpoint 4 and results
    shutil.copytree(straight, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    for name in ("experts.npz", "experts.json"):
        os.remove(os.path.join(resumed, name))
    capsys.readouterr()
    train_guidance(_job_config(cfg, clf, resumed), wd)
    assert "at step 2" in capsys.readouterr().out
    template = _template(straight)
    chex.assert_trees_all_equal(load_experts(resumed, template), load_experts(straight, template))

    run = cfg.copy_and_resolve_references()
    run.guidance = guidance_config("ppap", experts_dir=straight, scale=3.0, unconditional=True)
    spec, _ = spec_for_data(run)
    params, _ = restore_model(spec, wd)
    den = spec.guided(params)
    x = jax.random.normal(jax.random.key(0), (4,) + spec.example_shape)
    y = jnp.arange(4, dtype=jnp.int32)
    plain = spec.denoiser(params)(x, 0.5, jnp.full_like(y, spec.null))
    guided = den(x, 0.5, y)
    assert np.all(np.isfinite(guided)) and not np.allclose(guided, plain)
    chex.assert_trees_all_equal(dataclasses.replace(den, scale=0.0)(x, 0.5, y), plain)


def test_expert_losses_are_the_papers_kl_and_the_label_cross_entropy():
    """Each expert's loss on its own examples: KL(softmax(f(x0) / tau) || softmax(f_k(x_t)))
    (distill) and cross-entropy (labels), against a direct computation."""
    from jaxdiff.jobs.train_guidance import expert_losses

    base = _conv_params(jax.random.key(0))
    lora = lora_for(base, rank=2, alpha=4.0, exclude=("head",))
    experts = jax.vmap(lambda k: lora.init(base, k))(jax.random.split(jax.random.key(1), 2))
    experts["b"] = [jax.random.normal(jax.random.key(2), b.shape) for b in experts["b"]]
    bank = ExpertBank(_conv_net, lora, (0.0, 0.5, 1.0))
    x0 = jax.random.normal(jax.random.key(3), (2, 3, 5, 5, 4))
    eps = jax.random.normal(jax.random.key(4), x0.shape)
    t = jnp.asarray([[0.1, 0.2, 0.3], [0.6, 0.7, 0.9]])
    y = jnp.asarray([[0, 1, 1], [1, 0, 1]], jnp.int32)
    kl = expert_losses(bank, base, experts, x0, t, eps, y, SCHED, distill=True,
                       temperature=0.25)
    ce = expert_losses(bank, base, experts, x0, t, eps, y, SCHED, distill=False,
                       temperature=0.25)
    for k in range(2):
        a, s = SCHED.alpha_sigma(t[k])
        x_t = a[:, None, None, None] * x0[k] + s[:, None, None, None] * eps[k]
        student = jax.nn.log_softmax(_conv_net(lora.merge(base, jax.tree.map(
            lambda v: v[k], experts)), x_t))
        teacher = jax.nn.softmax(_conv_net(base, x0[k]) / 0.25)
        np.testing.assert_allclose(kl[k], np.mean(np.sum(
            teacher * (np.log(teacher) - student), -1)), rtol=1e-4)
        np.testing.assert_allclose(ce[k], -np.mean(student[np.arange(3), y[k]]), rtol=1e-5)
