"""Trains the own-feature classifier (``jaxdiff.models.classifier``) and loads it back verified.

``train_classifier`` writes into ``workdir``:
  classifier_params.npz     the parameters, one array per '/'-joined state path (float32)
  feature_network.json      manifest: network name, dataset, data config, split sizes, held-out
                            accuracy, training settings, architecture config, the params file
                            name and its SHA-256

``load_feature_network(workdir or manifest)`` recomputes the SHA-256 of the params file and
refuses a mismatch, so a feature space used for reference statistics is exactly the one that
was trained and evaluated.

Training: AdamW (Loshchilov & Hutter 2019) on softmax cross-entropy, linear warm-up then cosine
decay, batches from the stateless ``BatchSampler`` (order a function of (seed, step)), optional
random translations of up to ``shift`` pixels (edge-padded) with offsets drawn on the host from
``default_rng([seed, step, 2])`` (a function of (seed, step) too).  Parameters are initialised
under one ``jit`` with an ``rbg`` key (compiles ~4x faster than threefry on CPU; the initial
values depend on the backend, the trained result is pinned by its checksum).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxdiff.data import BatchSampler, dataset_name, get_source
from jaxdiff.errors import IncompatibleCheckpointError, MissingInputError
from jaxdiff.jsonio import write_json
from jaxdiff.metrics.features import FeatureNetwork, sha256_file
from jaxdiff.models.classifier import build_classifier, default_classifier_config

PARAMS_FILE = "classifier_params.npz"
MANIFEST_FILE = "feature_network.json"
NETWORK_NAME = "jaxdiff-classifier"


def _flatten(tree, prefix=()) -> dict[str, np.ndarray]:
    """Nested dict (NNX pure dict; int keys for lists) -> {'a/0/b': array}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (str(k),)))
        else:
            out["/".join(prefix + (str(k),))] = np.asarray(v)
    return out


def _unflatten_like(template, flat: dict[str, np.ndarray], prefix=()) -> dict:
    """Rebuilds ``template``'s nested dict (keeping its key types) with arrays from ``flat``."""
    out = {}
    for k, v in template.items():
        if isinstance(v, dict):
            out[k] = _unflatten_like(v, flat, prefix + (str(k),))
        else:
            name = "/".join(prefix + (str(k),))
            if name not in flat:
                raise ValueError(f"classifier parameters: missing array {name!r}")
            if flat[name].shape != tuple(v.shape):
                raise ValueError(f"classifier parameter {name!r}: expected shape "
                                 f"{tuple(v.shape)}, got {flat[name].shape}")
            out[k] = jnp.asarray(flat[name])
    return out


def shift_offsets(seed: int, step: int, batch_size: int, shift: int) -> np.ndarray:
    """int32 (B, 2) offsets in [0, 2 shift] for ``random_shift``; default_rng([seed, step, 2])."""
    return np.random.default_rng([seed, step, 2]).integers(
        0, 2 * shift + 1, (batch_size, 2)).astype(np.int32)


def random_shift(images: jax.Array, offsets: jax.Array, shift: int) -> jax.Array:
    """Translates image b by (offsets[b] - shift) pixels along (H, W), edge-padded.

    images: (B, H, W, C); offsets: int (B, 2) in [0, 2 shift]. Returns (B, H, W, C).
    """
    if shift == 0:
        return images
    h, w, c = images.shape[1:]
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)


def _make_apply(graphdef):
    @jax.jit
    def apply(state, images):
        return nnx.merge(graphdef, state)(images)
    return apply


def _accuracy(net: FeatureNetwork, source) -> float:
    images, labels = source.get(np.arange(len(source)))
    return float(np.mean(net.logits(images).argmax(axis=1) == labels))


def train_classifier(data_cfg: ml_collections.ConfigDict, workdir: str, steps: int = 1500,
                     batch_size: int = 128, seed: int = 0, *,
                     arch: ml_collections.ConfigDict | None = None, lr: float = 2e-3,
                     weight_decay: float = 1e-4, shift: int | None = None) -> dict:
    """Trains the classifier on the train split, evaluates on held-out data, saves it.

    Args:
      data_cfg: a data config (``jaxdiff.data.default_data_config``).
      workdir: output directory (created).
      steps: optimizer steps.  batch_size: examples per step.  seed: init + batch order.
      arch: architecture (``default_classifier_config()`` when None).
      lr: peak AdamW learning rate.  weight_decay: AdamW decoupled weight decay.
      shift: max random translation in pixels; None -> max(1, H // 16); 0 disables.
    Returns:
      The manifest dict (also written to ``workdir/feature_network.json``).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    arch = default_classifier_config() if arch is None else arch
    train_src, heldout_src = get_source(data_cfg, "train"), get_source(data_cfg, "heldout")
    shape = train_src.example_shape
    shift = max(1, shape[0] // 16) if shift is None else int(shift)
    def init():
        rngs = nnx.Rngs(jax.random.key(seed, impl="rbg"))
        return nnx.split(build_classifier(arch, shape, train_src.num_classes, rngs))

    graphdef, _ = nnx.eval_shape(init)
    state = jax.jit(lambda: init()[1])()  # one compiled initialiser, not one per layer
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, max(steps // 10, 1)),
                                                  max(steps, 2))
    optimizer = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = optimizer.init(state)

    @jax.jit
    def train_step(state, opt_state, images, labels, offsets):
        images = random_shift(images, offsets, shift)

        def loss_fn(s):
            logits = nnx.merge(graphdef, s).logits(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    sampler = BatchSampler(len(train_src), min(batch_size, len(train_src)), seed)
    from tqdm import tqdm
    for step in tqdm(range(steps), desc="train classifier", unit="step", dynamic_ncols=True):
        images, labels = train_src.get(sampler.indices_for_step(step))
        offsets = shift_offsets(seed, step, len(labels), shift)
        state, opt_state, _ = train_step(state, opt_state, images, labels, offsets)

    os.makedirs(workdir, exist_ok=True)
    params_path = os.path.join(workdir, PARAMS_FILE)
    np.savez(params_path, **_flatten(nnx.to_pure_dict(state)))
    checksum = sha256_file(params_path)
    forward = _make_apply(graphdef)
    feature_net = FeatureNetwork(name=f"{NETWORK_NAME}/{dataset_name(data_cfg)}",
                                 checksum=checksum, feature_dim=int(arch.feature_dim),
                                 num_classes=train_src.num_classes,
                                 apply=lambda x: forward(state, x),
                                 batch_size=500)
    manifest = dict(
        name=feature_net.name, dataset=dataset_name(data_cfg),
        data_config=json.loads(data_cfg.to_json()),
        image_shape=list(shape), num_classes=train_src.num_classes,
        split_sizes=dict(train=len(train_src), heldout=len(heldout_src)),
        heldout_accuracy=_accuracy(feature_net, heldout_src),
        training=dict(steps=steps, batch_size=batch_size, seed=seed, lr=lr,
                      weight_decay=weight_decay, shift=shift),
        architecture=json.loads(arch.to_json()), params_file=PARAMS_FILE, sha256=checksum,
        trained_with=_environment())
    write_json(os.path.join(workdir, MANIFEST_FILE), manifest)
    return manifest


def _environment() -> dict:
    """The library versions and backend a network was trained with: retraining with the same
    ones on the same kind of CPU reproduces its bytes."""
    from importlib import metadata

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return dict(versions, backend=jax.default_backend(), machine=platform.machine())


def read_manifest(path: str) -> tuple[dict, str]:
    """(manifest, directory) from a workdir or the path of its ``feature_network.json``."""
    manifest_path = os.path.join(path, MANIFEST_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"no feature-network manifest at {manifest_path!r}; train one "
                                f"with jaxdiff.classifier_train.train_classifier")
    with open(manifest_path) as f:
        return json.load(f), os.path.dirname(os.path.abspath(manifest_path))


@dataclasses.dataclass(frozen=True)
class ClassifierWeights:
    """A trained classifier as a function of its parameters (to adapt or differentiate them).

    Fields: graphdef (the NNX graph), params (pure dict, float32), manifest (its
    ``feature_network.json``), directory (where it lives), checksum (its params file's SHA-256).
    ``logits(params, x)``: images (B, H, W, C) in [-1, 1] -> (B, num_classes).
    """

    graphdef: Any
    params: Any
    manifest: dict
    directory: str
    checksum: str

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def logits_fn(self) -> "ClassifierLogits":
        return ClassifierLogits(self.graphdef)


@dataclasses.dataclass(frozen=True)
class ClassifierLogits:
    """``logits_fn(params, x) -> (B, K)`` of a classifier graph (hashable: a jit static)."""

    graphdef: Any

    def __call__(self, params, x):
        return nnx.merge(self.graphdef, params).logits(x)


def load_classifier_weights(path: str) -> ClassifierWeights:
    """Loads a trained classifier's parameters after verifying their checksum.

    Args:
      path: the training workdir or its ``feature_network.json``.
    Raises:
      FileNotFoundError: manifest or params file missing.
      ValueError: the params file's SHA-256 differs from the manifest's, or its arrays do not
        match the architecture.
    """
    manifest, directory = read_manifest(path)
    params_path = os.path.join(directory, manifest["params_file"])
    if not os.path.isfile(params_path):
        raise FileNotFoundError(f"classifier parameters {params_path!r} are missing")
    checksum = sha256_file(params_path)
    if checksum != manifest["sha256"]:
        raise ValueError(f"{params_path}: SHA-256 {checksum} does not match the manifest's "
                         f"{manifest['sha256']}; the parameters were changed or corrupted "
                         f"after training")
    arch = ml_collections.ConfigDict(manifest["architecture"])
    abstract = nnx.eval_shape(lambda: build_classifier(
        arch, tuple(manifest["image_shape"]), int(manifest["num_classes"]), nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    with np.load(params_path, allow_pickle=False) as data:
        flat = {k: np.asarray(data[k]) for k in data.files}
    template = nnx.to_pure_dict(state)
    unexpected = sorted(set(flat) - set(_flatten(template)))
    if unexpected:
        raise ValueError(f"{params_path}: arrays {unexpected} are not parameters of the "
                         f"architecture in the manifest")
    return ClassifierWeights(graphdef, _unflatten_like(template, flat), manifest, directory,
                             checksum)


def load_feature_network(path: str, batch_size: int = 500) -> FeatureNetwork:
    """Loads a trained classifier as a ``FeatureNetwork`` after verifying its checksum.

    Args:
      path: the training workdir or its ``feature_network.json``.
      batch_size: images per compiled forward call.
    Returns:
      FeatureNetwork: images (N, H, W, C) in [-1, 1] -> features (N, feature_dim), logits
      (N, num_classes); ``checksum`` is the params file's SHA-256.
    Raises: as ``load_classifier_weights``.
    """
    w = load_classifier_weights(path)
    apply = _make_apply(w.graphdef)
    return FeatureNetwork(name=w.manifest["name"], checksum=w.checksum,
                          feature_dim=int(w.manifest["architecture"]["feature_dim"]),
                          num_classes=w.num_classes,
                          apply=lambda x: apply(w.params, x), batch_size=batch_size)


# ------------------------------------------------------------------------------------------------
# the dataset's own feature network, as the evaluation and classification jobs use it
# ------------------------------------------------------------------------------------------------

FEATURE_NETWORK_CHOICES = ("auto", "pinned", "trained")


def pinned_feature_network_dir(dataset: str) -> str | None:
    """The directory of the feature network shipped inside the package for ``dataset``
    (``jaxdiff/assets/feature_networks/<dataset>``), or None when the package ships none."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                        "feature_networks", dataset.replace("/", "_"))
    return path if os.path.isfile(os.path.join(path, MANIFEST_FILE)) else None


def uses_pinned_network(config) -> bool:
    """Whether the evaluation of ``config`` uses the pinned (shipped) feature network:
    ``eval.feature_network`` 'pinned', or 'auto' with no ``eval.feature_network_dir`` for a
    dataset the package ships a network for."""
    e = config.eval
    if e.feature_network == "pinned":
        return True
    return (e.feature_network == "auto" and not e.feature_network_dir
            and pinned_feature_network_dir(dataset_name(config.data)) is not None)


def _cache_dir() -> str:
    return os.environ.get("JAXDIFF_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "jaxdiff"))


def feature_network_dir(config) -> str:
    """Where the dataset's trained feature network lives: ``config.eval.feature_network_dir``,
    or ``$JAXDIFF_CACHE/feature_networks/<dataset>`` (JAXDIFF_CACHE defaults to
    ~/.cache/jaxdiff)."""
    e = config.eval
    if e.feature_network_dir:
        return e.feature_network_dir
    return os.path.join(_cache_dir(), "feature_networks",
                        dataset_name(config.data).replace("/", "_"))


def _pinned_training_settings(config) -> bool:
    """Whether ``config.eval``'s classifier settings are those the pinned network was trained
    with (so retraining should reproduce its bytes)."""
    pinned = pinned_feature_network_dir(dataset_name(config.data))
    if pinned is None:
        return False
    t = read_manifest(pinned)[0]["training"]
    e = config.eval
    return (int(e.classifier_steps), int(e.classifier_batch_size), int(e.classifier_seed)) == (
        t["steps"], t["batch_size"], t["seed"])


def train_feature_network(config) -> dict:
    """Trains (or retrains) the dataset's own feature network with ``config.eval``'s settings
    into ``feature_network_dir(config)``; returns its manifest.  Where the package ships a
    pinned network for the dataset, says whether the retrained bytes equal it."""
    e = config.eval
    out = feature_network_dir(config)
    manifest = train_classifier(config.data, out, steps=int(e.classifier_steps),
                                batch_size=int(e.classifier_batch_size), seed=int(e.classifier_seed))
    print(f"feature network for {manifest['dataset']}: held-out accuracy "
          f"{manifest['heldout_accuracy']:.4f}, sha256 {manifest['sha256'][:12]}..., in {out}",
          flush=True)
    pinned = pinned_feature_network_dir(manifest["dataset"])
    if pinned is not None:
        pinned_sha = read_manifest(pinned)[0]["sha256"]
        if manifest["sha256"] == pinned_sha:
            print("identical, byte for byte, to the pinned feature network shipped in the "
                  "package", flush=True)
        else:
            why = ("this jax/jaxlib version or CPU computes different last bits" if
                   _pinned_training_settings(config) else "the classifier settings differ")
            print(f"not the pinned feature network (sha256 {pinned_sha[:12]}...; {why}): FDs, "
                  f"precision and recall in this feature space are comparable only with runs "
                  f"evaluated with this same network; evaluate with it through "
                  f"--config.eval.feature_network=trained", flush=True)
    return manifest


def classifier_directory(path: str, config) -> str:
    """The directory of a classifier named by a config field: ``path``, or with '' the
    dataset's own feature network (``own_feature_space``: the pinned one, or one trained
    here)."""
    return path or own_feature_space(config).directory


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
    """The feature network an evaluation uses.

    Fields:
      network:       the loaded, checksum-verified ``FeatureNetwork``.
      directory:     where its manifest and parameters are.
      reference_dir: where reference statistics in this space are stored.
      pinned:        True for the network shipped in the package (numbers comparable across
                     machines), False for one trained on this machine.
    """

    network: FeatureNetwork
    directory: str
    reference_dir: str
    pinned: bool


def own_feature_space(config) -> FeatureSpace:
    """The dataset's feature network as ``config.eval.feature_network`` selects it: the pinned
    one shipped in the package, or one trained on this machine (trained first when missing and
    ``config.eval.train_classifier_if_missing``)."""
    dataset = dataset_name(config.data)
    if uses_pinned_network(config):
        path = pinned_feature_network_dir(dataset)
        if path is None:
            raise MissingInputError(f"the package ships no pinned feature network for "
                                    f"{dataset!r}; use --config.eval.feature_network=trained")
        shape = list(get_source(config.data, "heldout").example_shape)
        expected = read_manifest(path)[0]["image_shape"]
        if expected != shape:
            raise IncompatibleCheckpointError(
                f"the pinned feature network for {dataset!r} takes images of shape "
                f"{expected}, this data config gives {shape}; use "
                f"--config.eval.feature_network=trained")
        network = load_feature_network(path)
        # references go to the cache: the package directory may be read-only
        reference_dir = os.path.join(_cache_dir(), "feature_networks",
                                     f"{dataset.replace('/', '_')}-pinned-{network.checksum[:12]}")
        os.makedirs(reference_dir, exist_ok=True)
        return FeatureSpace(network, path, reference_dir, True)
    path = feature_network_dir(config)
    if not os.path.exists(os.path.join(path, MANIFEST_FILE)):
        if not config.eval.train_classifier_if_missing:
            raise MissingInputError(f"no feature network in {path}: run --mode=train_classifier "
                                    f"or set config.eval.train_classifier_if_missing=True")
        train_feature_network(config)
    return FeatureSpace(load_feature_network(path), path, path, False)
