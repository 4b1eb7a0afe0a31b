"""The ``config.search`` section: inference-time search in the sampling job.

``search.name`` selects a registered search (``SEARCHES``; 'none', the default, is plain
sampling) and the section holds that search's own fields plus ``verifier``.  With a search, the
sampling job (``--mode=sample``, and the evaluation that reads its samples) draws every shard by
the search instead of one sampler solve: same shards, same resumption, the search section in the
samples' protocol.  The sampler, its steps, grid and options come from ``config.sample`` (a noise
search needs a deterministic solver there; SMC and the trees take DDIM steps with their own
``eta``).

Verifiers (``search.verifier``), on the evaluation's feature network
(``config.eval.feature_network``: the pinned one where the package ships it):
  classifier          log p(c | x0) of its softmax for the sample's class: Ma et al.'s "oracle"
                      verifier, the reward of Diffusion Tree Sampling's class experiments
  feature_similarity  the self-supervised verifier of Ma et al.: the cosine similarity of its
                      features of x0 and of the model's x0-prediction from x0 noised to
                      ``search.verifier_sigma`` (sigma/alpha; one denoiser call per score,
                      counted in the NFE); needs no class

A search registers ``run(den, key, shape, verifier, sample, section, cond, indices) ->
SearchResult`` with ``register_search(name, defaults=..., check=...)`` in its own file.
"""
from __future__ import annotations

import ml_collections

from jaxdiff.config import choice, number, register_section
from jaxdiff.errors import ConfigError
from jaxdiff.registry import Registry

SEARCHES = Registry("search")
VERIFIERS = ("classifier", "feature_similarity")


def register_search(name: str, *, defaults, check=None):
    """Registers a search's runner (a decorator); ``defaults() -> ConfigDict`` of its fields
    (``verifier`` and ``verifier_sigma`` are added), ``check(section, config)`` raising
    ConfigError naming a field."""
    def with_verifier():
        section = defaults()
        section.verifier = "classifier"
        section.verifier_sigma = 2.0 / 3.0
        return section

    return SEARCHES.register(name, defaults=with_verifier, check=check)


SEARCHES.register("none", "plain sampling: one solve per sample")


def search_config(name: str = "none", **fields) -> ml_collections.ConfigDict:
    """A ``config.search`` section for ``name`` with its defaults, updated by ``fields``."""
    return SEARCHES.section(name, "search", **fields)


def _defaults() -> ml_collections.ConfigDict:
    return search_config("none")


def _check(section, config, num_classes=None, **_) -> None:
    name = section.get("name")
    SEARCHES.entry(name, "search.name")
    if name == "none":
        return
    verifier = section.get("verifier")
    choice(verifier, "search.verifier", VERIFIERS)
    number(section.get("verifier_sigma"), "search.verifier_sigma", low=0.0, low_open=True)
    if num_classes == 0 and verifier == "classifier":
        raise ConfigError("config.search.verifier: the classifier verifier scores the sample's "
                          "class, and this model is unconditional")
    SEARCHES.check(name, section, "search.name", config=config)


register_section("search", defaults=_defaults, check=_check)


def check_fields(section, **rules) -> None:
    """``number`` on each named field of the section: rules map a field to number()'s keywords
    (e.g. candidates=dict(low=1, integer=True))."""
    for name, kw in rules.items():
        number(section[name], f"search.{name}", **kw)


def check_deterministic_sampler(config) -> None:
    """A noise search needs ``config.sample`` to name a deterministic solver."""
    from jaxdiff.search.base import check_deterministic

    try:
        check_deterministic(config.sample.sampler, dict(config.sample.options))
    except ValueError as e:
        raise ConfigError(f"config.sample.sampler: {e}") from None


def sample_solver(sample) -> dict:
    """The solver keywords of ``config.sample``: sampler, steps, grid and its options."""
    return dict(sampler=sample.sampler, steps=int(sample.steps), grid=sample.grid,
                **dict(sample.options))


def run_search(config, den, key, shape, verifier, cond, indices):
    """The registered search ``config.search.name`` on one batch: a SearchResult."""
    section = config.search
    run = SEARCHES.entry(section.name, "search.name").obj
    return run(den, key, shape, verifier, config.sample, section, cond=cond, indices=indices)
