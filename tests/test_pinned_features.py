"""The feature network shipped in the package for MNIST-5k: it loads, its parameters match the
recorded SHA-256, it classifies the held-out split, and the evaluation selects it by default
(so every machine's FD is computed in the same feature space)."""
import os
import shutil

import numpy as np
import pytest

from jaxdiff import config as C
from jaxdiff.classifier_train import (MANIFEST_FILE, PARAMS_FILE, load_feature_network,
                                      own_feature_space, pinned_feature_network_dir,
                                      read_manifest, uses_pinned_network)
from jaxdiff.data import get_source
from jaxdiff.errors import ConfigError
from jaxdiff.metrics.features import sha256_file
from tests.helpers.cli import DIGITS, ROOT

MNIST5K = os.path.join(ROOT, "configs", "mnist5k.py")


def test_shipped_network_matches_checksum_and_classifies_heldout():
    path = pinned_feature_network_dir("mnist5k")
    assert path is not None and path.startswith(os.path.join(ROOT, "jaxdiff", "assets"))
    manifest, _ = read_manifest(path)
    assert sha256_file(os.path.join(path, PARAMS_FILE)) == manifest["sha256"]
    net = load_feature_network(path)
    assert net.checksum == manifest["sha256"] and net.name == "jaxdiff-classifier/mnist5k"
    config = C.load_config_file(MNIST5K)
    heldout = get_source(config.data, "heldout")
    images, labels = heldout.get(np.arange(len(heldout)))
    feats, logits = net.features_and_logits(images)
    assert feats.shape == (1000, net.feature_dim) and np.isfinite(feats).all()
    accuracy = float(np.mean(logits.argmax(1) == labels))
    assert accuracy >= 0.98, accuracy
    assert abs(accuracy - manifest["heldout_accuracy"]) < 1e-6  # the recorded figure


def test_changed_parameters_are_refused(tmp_path):
    copy = tmp_path / "net"
    shutil.copytree(pinned_feature_network_dir("mnist5k"), copy)
    data = bytearray((copy / PARAMS_FILE).read_bytes())
    data[-100] ^= 1
    (copy / PARAMS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the manifest"):
        load_feature_network(str(copy / MANIFEST_FILE))


def test_evaluation_selects_the_pinned_network_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path / "cache"))
    config = C.load_config_file(MNIST5K)
    assert config.eval.feature_network == "auto" and uses_pinned_network(config)
    space = own_feature_space(config)
    assert space.pinned and space.directory == pinned_feature_network_dir("mnist5k")
    assert space.reference_dir.startswith(str(tmp_path / "cache"))  # never the package dir
    # an explicit directory, or 'trained', selects a network trained on this machine
    assert not uses_pinned_network(C.load_config_file(
        MNIST5K, {"eval.feature_network_dir": str(tmp_path / "mine")}))
    assert not uses_pinned_network(C.load_config_file(
        MNIST5K, {"eval.feature_network": "trained"}))
    # digits ships no pinned network: 'auto' trains one, 'pinned' is a config error
    digits = C.load_config_file(DIGITS)
    assert pinned_feature_network_dir("digits") is None and not uses_pinned_network(digits)
    with pytest.raises(ConfigError, match=r"^config\.eval\.feature_network: .*digits"):
        C.validate(C.load_config_file(DIGITS, {"eval.feature_network": "pinned"}))
    with pytest.raises(ConfigError, match=r"^config\.eval\.feature_network: unknown"):
        C.validate(C.load_config_file(MNIST5K, {"eval.feature_network": "inception"}))
