"""PPAP, practical plug-and-play guidance (Go et al., CVPR 2023, "Towards practical plug-and-play
diffusion models"; official code: riiid/PPAP), as classifier guidance with a time-routed bank.

A bank of N experts guides as classifier guidance does (Dhariwal & Nichol 2021; PPAP Eq. 2):

    score_guided(x, t, y) = score(x, t, y) + s grad_x log softmax(f_{k(t)}(x))_y

where expert k(t) is responsible for the time range [b_k, b_{k+1}) (PPAP: N = 5 equal ranges of
the diffusion's steps; here equal ranges of the run's t on [t_min, t_max] unless given) and is
the off-the-shelf clean classifier f plus a LoRA adapter (``jaxdiff.models.lora``; rank 16,
alpha 8 in the paper), trained without labels on the diffusion model's own samples by
``--mode=train_guidance`` (``jaxdiff.jobs.train_guidance``).  Through Tweedie this is
x0_guided = x0_hat + s (sigma^2 / alpha) grad_x log p_k(y | x_t) (``ClassifierGuidance``).

The bank is a ``log_prob_fn(params, x, t, y)``, ``params = dict(base=..., experts=...)`` with the
experts' adapters stacked along a leading axis N (traced: new weights never recompile).  A batch
whose examples all fall in one range runs that expert once; a batch spread over several ranges
(e.g. a sampler that steps examples at their own t) runs every expert and keeps each example's
own.
With one expert whose adapter is untouched the bank is the clean classifier itself on x_t, the
naive baseline PPAP improves on.

Shapes: x (B, ...), t () or (B,), y (B,) int32 labels; labels >= num_classes (the null token) are
not guided.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.denoiser import DenoiserBase
from jaxdiff.errors import ConfigError
from jaxdiff.guidance.base import NullCondition, register_guidance
from jaxdiff.guidance.classifier import ClassifierGuidance
from jaxdiff.models.lora import LoRA, lora_for

Array = jax.Array

EXPERTS_FILE = "experts.npz"
EXPERTS_MANIFEST = "experts.json"


def default_boundaries(num_experts: int, t_min: float, t_max: float) -> tuple[float, ...]:
    """N + 1 equal-width boundaries of [t_min, t_max] (PPAP's equal split of the steps)."""
    return tuple(float(b) for b in np.linspace(float(t_min), float(t_max), int(num_experts) + 1))


def check_boundaries(boundaries, t_min: float, t_max: float, field: str = "boundaries"
                     ) -> tuple[float, ...]:
    """The boundaries as floats; ValueError naming ``field`` unless they increase strictly and
    cover [t_min, t_max] (b_0 <= t_min, b_N >= t_max)."""
    b = tuple(float(v) for v in boundaries)
    if len(b) < 2 or any(hi <= lo for lo, hi in zip(b, b[1:])):
        raise ValueError(f"{field}: expert ranges need at least two strictly increasing "
                         f"boundaries, got {b}")
    if b[0] > t_min or b[-1] < t_max:
        raise ValueError(f"{field}: the expert ranges [{b[0]}, {b[-1]}] do not cover the "
                         f"schedule's t range [{t_min}, {t_max}]")
    return b


def expert_index(t: Array, boundaries: tuple[float, ...]) -> Array:
    """(B,) int32 expert of each time: k with b_k <= t < b_{k+1}, clipped to [0, N - 1]."""
    inner = jnp.asarray(boundaries[1:-1], jnp.float32)
    k = jnp.searchsorted(inner, jnp.asarray(t, jnp.float32), side="right")
    return jnp.clip(k, 0, len(boundaries) - 2).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ExpertBank:
    """N classifiers routed by t, as ``log_prob_fn(params, x, t, y) -> (B,)`` (static; hashable).

    logits_fn: ``logits_fn(classifier_params, x) -> (B, K)`` of the base classifier.
    lora: the experts' ``LoRA`` over the base parameters; None when each expert is a full
      parameter tree of the classifier (``params['base']`` unused).
    boundaries: N + 1 increasing times; expert k covers [b_k, b_{k+1}).
    params: dict(base=classifier params, experts=adapters (or full trees) stacked on axis 0).
    """

    logits_fn: Callable[[Any, Array], Array]
    lora: LoRA | None
    boundaries: tuple[float, ...]

    @property
    def num_experts(self) -> int:
        return len(self.boundaries) - 1

    def expert_logits(self, params, k, x: Array) -> Array:
        """(B, K) logits of expert ``k`` (an int or a traced index) for the whole batch x: the
        base classifier with the expert's adapter merged in (or the expert's own tree)."""
        expert = jax.tree.map(lambda a: a[k], params["experts"])
        merged = expert if self.lora is None else self.lora.merge(params["base"], expert)
        return self.logits_fn(merged, x)

    def logits(self, params, x: Array, t: Array) -> Array:
        """(B, K) logits of each example under the expert of its time; t (B,)."""
        k = expert_index(t, self.boundaries)

        def shared(_):
            return self.expert_logits(params, k[0], x)

        def per_example(_):  # every expert on the whole batch, each example's own kept
            # (a convolution vmapped over per-example kernels becomes a grouped convolution,
            # many times slower on CPU than N plain ones)
            out = None
            for e in range(self.num_experts):
                logits = self.expert_logits(params, e, x)
                mine = (k == e).reshape((-1,) + (1,) * (logits.ndim - 1))
                out = logits if out is None else jnp.where(mine, logits, out)
            return out

        if self.num_experts == 1:
            return shared(None)
        return jax.lax.cond(jnp.all(k == k[0]), shared, per_example, None)

    def __call__(self, params, x, t, y):
        logits = self.logits(params, x, t).astype(jnp.float32)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(log_p, jnp.asarray(y, jnp.int32)[:, None], axis=1)[:, 0]


def bank_lora(base_params, lora_cfg: dict) -> LoRA | None:
    """The experts' LoRA from its manifest entry dict(rank, alpha, exclude); None for rank 0
    (every expert a whole copy of the classifier)."""
    if int(lora_cfg["rank"]) == 0:
        return None
    return lora_for(base_params, int(lora_cfg["rank"]), float(lora_cfg["alpha"]),
                    exclude=tuple(lora_cfg["exclude"]))


def experts_template(base_params, lora: LoRA | None, num_experts: int):
    """The layout (shape structs, float32) of ``num_experts`` stacked experts of ``lora`` over
    the base parameters (of whole classifier copies when ``lora`` is None)."""
    one = base_params if lora is None else jax.eval_shape(
        lambda: lora.init(base_params, jax.random.key(0)))
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((int(num_experts),) + tuple(a.shape), jnp.float32), one)


def single_expert(params):
    """A bank's ``experts`` holding one expert: ``params`` stacked on a new axis of size 1."""
    return jax.tree.map(lambda a: jnp.asarray(a)[None], params)


def ppap(inner: DenoiserBase, bank: ExpertBank, params, *, num_classes: int, scale=7.5
         ) -> ClassifierGuidance:
    """PPAP guidance of ``inner`` by the expert ``bank`` (its ``params``) at scale s (traced)."""
    return ClassifierGuidance(inner, bank, params, scale=scale, num_classes=int(num_classes))


# ------------------------------------------------------------------------------------------------
# the experts on disk (written by --mode=train_guidance)
# ------------------------------------------------------------------------------------------------

def save_experts(directory: str, experts, manifest: dict) -> str:
    """Writes the stacked ``experts`` (a pytree of (N, ...) arrays) and ``manifest`` (which must
    hold what ``bank_from_directory`` reads: boundaries, lora, base classifier) into ``directory``;
    returns the manifest path.  The arrays' file gets a SHA-256 in the manifest."""
    from jaxdiff.jsonio import write_json
    from jaxdiff.metrics.features import sha256_file

    os.makedirs(directory, exist_ok=True)
    flat, _ = jax.tree_util.tree_flatten(experts)
    path = os.path.join(directory, EXPERTS_FILE)
    np.savez(path, **{f"leaf_{i:04d}": np.asarray(a) for i, a in enumerate(flat)})
    manifest = dict(manifest, experts_file=EXPERTS_FILE, sha256=sha256_file(path),
                    num_leaves=len(flat))
    out = os.path.join(directory, EXPERTS_MANIFEST)
    write_json(out, manifest)
    return out


def read_experts_manifest(directory: str) -> dict:
    path = os.path.join(directory, EXPERTS_MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no trained experts in {directory!r} (missing "
                                f"{EXPERTS_MANIFEST}); train them with --mode=train_guidance")
    with open(path) as f:
        return json.load(f)


def load_experts(directory: str, template):
    """The stacked experts saved in ``directory``, in the layout of ``template`` (a pytree of
    (N, ...) arrays or shape structs), checksum verified."""
    from jaxdiff.metrics.features import sha256_file

    manifest = read_experts_manifest(directory)
    path = os.path.join(directory, manifest["experts_file"])
    if sha256_file(path) != manifest["sha256"]:
        raise ValueError(f"{path}: SHA-256 does not match {EXPERTS_MANIFEST}; the experts were "
                         f"changed or corrupted after training")
    leaves, treedef = jax.tree_util.tree_flatten(template)
    with np.load(path, allow_pickle=False) as data:
        arrays = [np.asarray(data[f"leaf_{i:04d}"]) for i in range(len(data.files))]
    if len(arrays) != len(leaves) or any(a.shape != tuple(t.shape)
                                         for a, t in zip(arrays, leaves)):
        raise ValueError(f"{path}: the saved experts do not fit the bank described by "
                         f"{EXPERTS_MANIFEST} (a different classifier or LoRA)")
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in arrays])


# ------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------

def _defaults():
    import ml_collections

    return ml_collections.ConfigDict(dict(scale=7.5, experts_dir="", classifier_dir="",
                                          unconditional=False))


def _check(section) -> None:
    from jaxdiff.config import boolean, number, path_string

    number(section.get("scale"), "guidance.scale")
    for field in ("experts_dir", "classifier_dir"):
        path_string(section.get(field), f"guidance.{field}")
    boolean(section.get("unconditional"), "guidance.unconditional")


def bank_from_directory(experts_dir: str, spec) -> tuple[ExpertBank, Any, int]:
    """(bank, params, num_classes) of the experts trained into ``experts_dir``: their base
    classifier is loaded (checksum checked against the one they were trained on)."""
    from jaxdiff.classifier_train import classifier_directory, load_classifier_weights

    manifest = read_experts_manifest(experts_dir)
    base = load_classifier_weights(classifier_directory(manifest["classifier_dir"], spec.config))
    if base.checksum != manifest["classifier_sha256"]:
        raise ConfigError(f"config.guidance.experts_dir: the experts in {experts_dir} were "
                          f"trained on the classifier with SHA-256 "
                          f"{manifest['classifier_sha256'][:12]}..., its base now has "
                          f"{base.checksum[:12]}...")
    lora = bank_lora(base.params, manifest["lora"])
    boundaries = tuple(manifest["boundaries"])
    experts = load_experts(experts_dir,
                           experts_template(base.params, lora, len(boundaries) - 1))
    bank = ExpertBank(base.logits_fn, lora, boundaries)
    return bank, dict(base=base.params, experts=experts), base.num_classes


@register_guidance("ppap", defaults=_defaults, check=_check, evals_per_call=lambda section: 1)
def build_ppap(inner, section, spec):
    """PPAP with the experts of ``experts_dir`` (``--mode=train_guidance``); with no experts,
    the clean classifier of ``classifier_dir`` (default: the dataset's own) on x_t, the naive
    baseline.  ``unconditional``: guide the model's unconditional prediction (null condition)
    towards the label.  An unconditional run is returned unguided (no labels to guide to)."""
    if spec.num_classes == 0:
        return inner
    if section.experts_dir:
        try:
            bank, params, k = bank_from_directory(section.experts_dir, spec)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"config.guidance.experts_dir: {e}") from None
    else:
        from jaxdiff.guidance.elucd import load_classifier

        logits_fn, base, k = load_classifier(section, spec)
        s = inner.schedule
        bank = ExpertBank(logits_fn, None, default_boundaries(1, s.t_min, s.t_max))
        params = dict(base=None, experts=single_expert(base))
    if int(k) != int(spec.num_classes):
        raise ConfigError(f"config.guidance: the guiding classifier has {k} classes, the run "
                          f"has {spec.num_classes}")
    if section.unconditional:
        inner = NullCondition(inner, int(spec.null))
    return ppap(inner, bank, params, num_classes=int(spec.num_classes),
                scale=float(section.scale))
