"""Reference statistics of a dataset split in a feature network's space, pinned by checksums.

A reference is two files:
  <name>.npz        mu float64 (d,), sigma float64 (d, d) (``feature_statistics``), optionally
                    the features float32 (n, d) (for precision / recall and KID), and
                    ``metadata``: a JSON string (below).
  <name>.npz.json   sidecar: the same metadata plus ``stats_file`` and ``sha256``, the SHA-256
                    of the .npz bytes.
metadata = {feature_network, feature_network_sha256, dataset, split, count, feature_dim,
            has_features, format_version}.

``load_reference`` refuses statistics whose file no longer matches its recorded SHA-256, or
that were computed with a different feature network than the one the caller will use, so a
FID is never computed between features of two different networks (or of a silently edited
statistics file).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxdiff.jsonio import write_json
from jaxdiff.metrics.features import FeatureNetwork, sha256_file
from jaxdiff.metrics.frechet import feature_statistics

FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".json"


@dataclasses.dataclass(frozen=True)
class Reference:
    """Loaded reference statistics.

    Fields:
      mu: float64 (d,).  sigma: float64 (d, d).
      features: float32 (n, d), or None when the file holds statistics only.
      metadata: the dict described in the module docstring.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    metadata: dict


def extract_features(network: FeatureNetwork, source, limit: int | None = None,
                     chunk: int = 2000) -> np.ndarray:
    """Features of the first ``limit`` (default: all) examples of an image source.

    Args:
      network: the feature network.
      source: ``jaxdiff.data`` image source (``len`` and ``get(indices)``).
      limit: number of examples, <= len(source).
      chunk: examples read from the source at a time.
    Returns:
      float32 (n, d).
    """
    n = len(source) if limit is None else int(limit)
    if not 2 <= n <= len(source):
        raise ValueError(f"limit: need 2 <= limit <= {len(source)} (examples in "
                         f"{getattr(source, 'name', 'the source')}), got {limit}")
    parts = []
    for start in range(0, n, chunk):
        images, _ = source.get(np.arange(start, min(start + chunk, n)))
        parts.append(network.features(images))
    return np.concatenate(parts)


def sidecar_path(path: str) -> str:
    return path + SIDECAR_SUFFIX


def save_reference(path: str, features, *, network: FeatureNetwork, dataset: str, split: str,
                   store_features: bool = True) -> Reference:
    """Writes reference statistics of ``features`` (n, d) and their sidecar; returns them.

    Args:
      path: output file, must end in '.npz'.
      features: (n, d) features of the reference set, computed with ``network``.
      network: the feature network (its ``name`` and ``checksum`` are recorded).
      dataset, split: what the features describe, e.g. 'mnist5k', 'heldout'.
      store_features: also store the features (needed for precision / recall and KID).
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path: reference statistics are written as .npz, got {path!r}")
    features = np.asarray(features, np.float32)
    mu, sigma = feature_statistics(features)
    if features.shape[1] != network.feature_dim:
        raise ValueError(f"features: width {features.shape[1]} differs from the feature "
                         f"network's feature_dim {network.feature_dim} ({network.name})")
    metadata = dict(feature_network=network.name, feature_network_sha256=network.checksum,
                    dataset=str(dataset), split=str(split), count=int(features.shape[0]),
                    feature_dim=int(features.shape[1]), has_features=bool(store_features),
                    format_version=FORMAT_VERSION)
    arrays = dict(mu=mu, sigma=sigma, metadata=np.array(json.dumps(metadata, sort_keys=True)))
    if store_features:
        arrays["features"] = features
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)
    sidecar = dict(metadata, stats_file=os.path.basename(path), sha256=sha256_file(path))
    write_json(sidecar_path(path), sidecar, sort_keys=True)
    return Reference(mu=mu, sigma=sigma, features=features if store_features else None,
                     metadata=metadata)


def compute_reference(path: str, network: FeatureNetwork, source, *, dataset: str, split: str,
                      limit: int | None = None, store_features: bool = True) -> Reference:
    """``extract_features`` over ``source`` then ``save_reference``; returns the reference."""
    features = extract_features(network, source, limit)
    return save_reference(path, features, network=network, dataset=dataset, split=split,
                          store_features=store_features)


def load_reference(path: str, expected_feature_network_checksum: str) -> Reference:
    """Loads reference statistics after checking their integrity and feature network.

    Args:
      path: the .npz written by ``save_reference`` (its sidecar must sit next to it).
      expected_feature_network_checksum: SHA-256 of the feature network the caller will
        compare against (``FeatureNetwork.checksum``).
    Raises:
      FileNotFoundError: the .npz or its sidecar is missing.
      ValueError: the .npz's SHA-256 differs from the sidecar's; its embedded metadata differs
        from the sidecar's; or it was computed with another feature network.
    """
    path = os.fspath(path)
    for p in (path, sidecar_path(path)):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"reference statistics file {p!r} is missing")
    with open(sidecar_path(path)) as f:
        sidecar = json.load(f)
    actual = sha256_file(path)
    if actual != sidecar.get("sha256"):
        raise ValueError(f"{path}: SHA-256 {actual} does not match {sidecar.get('sha256')} "
                         f"recorded in {sidecar_path(path)}; the statistics were modified or "
                         f"corrupted -- recompute them")
    with np.load(path, allow_pickle=False) as data:
        metadata = json.loads(str(data["metadata"]))
        mu, sigma = np.asarray(data["mu"]), np.asarray(data["sigma"])
        features = np.asarray(data["features"]) if "features" in data.files else None
    recorded = {k: sidecar.get(k) for k in metadata}
    if recorded != metadata:
        raise ValueError(f"{path}: metadata {metadata} differs from its sidecar {recorded}")
    if metadata["feature_network_sha256"] != expected_feature_network_checksum:
        raise ValueError(
            f"{path}: statistics were computed with feature network "
            f"{metadata['feature_network']!r} (SHA-256 {metadata['feature_network_sha256']}), "
            f"not the expected one (SHA-256 {expected_feature_network_checksum}); recompute "
            f"the reference with the network you evaluate with")
    return Reference(mu=mu, sigma=sigma, features=features, metadata=metadata)
