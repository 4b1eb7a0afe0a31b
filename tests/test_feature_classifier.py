"""Own-feature classifier: trains on digits, verified loading, and its feature space separates
real from noise (Fréchet distance, precision / recall, reference statistics)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.classifier_train import (MANIFEST_FILE, PARAMS_FILE, load_feature_network,
                                      random_shift, train_classifier)
from jaxdiff.data import default_data_config, get_source
from jaxdiff.metrics import (compute_reference, feature_statistics, frechet_distance,
                             load_reference, precision_recall)
from jaxdiff.models.classifier import build_classifier, default_classifier_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("clf"))
    arch = default_classifier_config()
    arch.channels, arch.feature_dim = (16, 32, 64), 64  # smaller than the default: CPU time
    manifest = train_classifier(default_data_config("digits"), workdir, steps=100,
                                batch_size=64, seed=0, arch=arch)
    return workdir, manifest


def test_classifier_shapes_and_config_errors():
    cfg = default_classifier_config()
    net = nnx.eval_shape(lambda: build_classifier(cfg, (8, 8, 1), 10, nnx.Rngs(0)))
    graphdef, state = nnx.split(net)
    x = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32)
    feats, logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert feats.shape == (3, 128) and logits.shape == (3, 10)
    cfg.num_groups = 5
    with pytest.raises(ValueError, match="num_groups"):
        build_classifier(cfg, (8, 8, 1), 10, nnx.Rngs(0))
    with pytest.raises(ValueError, match="too small"):
        build_classifier(default_classifier_config(), (2, 2, 1), 10, nnx.Rngs(0))


def test_random_shift_translates_with_edge_padding():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    offsets = np.array([[0, 2]], np.int32)  # shift = 1: down by 1 row, left by 1 column
    out = np.asarray(random_shift(img, offsets, 1))[0, :, :, 0]
    padded = np.pad(img[0, :, :, 0], 1, mode="edge")
    np.testing.assert_array_equal(out, padded[0:4, 2:6])
    np.testing.assert_array_equal(np.asarray(random_shift(img, np.ones((1, 2), np.int32), 1)),
                                  img)


def test_train_accuracy_manifest_and_reload(trained):
    workdir, manifest = trained
    assert manifest["heldout_accuracy"] > 0.8  # chance is 0.1
    assert manifest["dataset"] == "digits"
    assert manifest["split_sizes"] == {"train": 1500, "heldout": 297}
    assert manifest["architecture"]["feature_dim"] == 64
    on_disk = json.load(open(os.path.join(workdir, MANIFEST_FILE)))
    assert on_disk == manifest
    net = load_feature_network(workdir)
    assert net.checksum == manifest["sha256"] and net.feature_dim == 64
    src = get_source(default_data_config("digits"), "heldout")
    images, labels = src.get(np.arange(len(src)))
    acc = np.mean(net.logits(images).argmax(axis=1) == labels)
    assert acc == pytest.approx(manifest["heldout_accuracy"], abs=1e-9)


def test_checksum_mismatch_refused(trained, tmp_path):
    workdir, _ = trained
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    path = os.path.join(copy, PARAMS_FILE)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    name = sorted(arrays)[0]
    arrays[name] = arrays[name] + 1e-3
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="does not match the manifest"):
        load_feature_network(copy)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_feature_network(os.path.join(copy, MANIFEST_FILE))


def test_own_features_real_vs_real_vs_noise(trained, tmp_path):
    workdir, _ = trained
    net = load_feature_network(workdir)
    cfg = default_data_config("digits")
    parts = [get_source(cfg, s).get(np.arange(len(get_source(cfg, s))))[0]
             for s in ("train", "heldout")]
    images = np.concatenate(parts)
    order = np.random.default_rng(0).permutation(len(images))
    half = len(images) // 2
    feats = net.features(images[order])
    a, b = feats[:half], feats[half:2 * half]
    noise = np.random.default_rng(1).uniform(-1, 1, (half,) + images.shape[1:]).astype(
        np.float32)
    fn = net.features(noise)
    fd_real = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    fd_noise = frechet_distance(*feature_statistics(a), *feature_statistics(fn))
    assert fd_real < 0.05 * fd_noise
    precision, recall = precision_recall(a, b)
    assert precision > 0.8 and recall > 0.8

    # reference statistics of the held-out split, pinned to this network
    path = str(tmp_path / "digits_heldout.npz")
    ref = compute_reference(path, net, get_source(cfg, "heldout"), dataset="digits",
                            split="heldout")
    loaded = load_reference(path, net.checksum)
    np.testing.assert_allclose(loaded.sigma, ref.sigma)
    assert loaded.metadata["feature_network"] == "jaxdiff-classifier/digits"
    assert loaded.metadata["count"] == 297 and loaded.features.shape == (297, 64)
    with pytest.raises(ValueError, match="computed with feature network"):
        load_reference(path, "0" * 64)
