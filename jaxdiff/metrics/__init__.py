"""Metrics: two-sample distances for toy data; feature-space scores for images.

  frechet      feature_statistics, frechet_distance (float64; sqrt(S1 S2) via symmetric eigh)
  scores       inception_score, kernel_inception_distance, precision_recall (k-NN manifolds)
  features     FeatureNetwork: (name, checksum, batched features / logits); sha256_file
  inception    load_inception: the FID Inception-v3 (pytorch-fid weights, read without torch)
  reference    reference statistics of a dataset split, pinned to their feature network
  two_sample   MMD, energy distance, sliced W2 for low-dimensional samples
  signals      signal_metrics for (N, L, C) signal sets: FD and MMD of the raw values, class
               accuracy under a spectral logistic-regression classifier (SignalClassifier)

The own-feature classifier is trained / loaded by ``jaxdiff.classifier_train``.
"""
from jaxdiff.metrics.features import FeatureNetwork, sha256_file
from jaxdiff.metrics.frechet import (feature_statistics, frechet_distance, sqrtm_psd,
                                     sqrtm_psd_product, trace_sqrtm_psd_product)
from jaxdiff.metrics.inception import WEIGHTS_ENV, WEIGHTS_FILE, check_weights, load_inception
from jaxdiff.metrics.reference import (Reference, compute_reference, extract_features,
                                       load_reference, save_reference)
from jaxdiff.metrics.scores import (inception_score, kernel_inception_distance, knn_radii,
                                    precision_recall)
from jaxdiff.metrics.signals import (SignalClassifier, fit_signal_classifier, signal_features,
                                     signal_metrics)

__all__ = ["FeatureNetwork", "Reference", "SignalClassifier", "WEIGHTS_ENV", "WEIGHTS_FILE",
           "check_weights", "compute_reference", "extract_features", "feature_statistics",
           "fit_signal_classifier", "frechet_distance", "inception_score",
           "kernel_inception_distance", "knn_radii", "load_inception", "load_reference",
           "precision_recall", "save_reference", "sha256_file", "signal_features",
           "signal_metrics", "sqrtm_psd", "sqrtm_psd_product", "trace_sqrtm_psd_product"]
