"""The evaluation job: metrics of a sampling job's shards against pinned reference statistics.

``--mode=eval`` reads the shards written by ``--mode=sample`` (same config, same workdir) and
reports, with the protocol stated next to every number:

  own-feature FD   Frechet distance (float64) on the penultimate features of jaxdiff's own
                   classifier for the dataset (``jaxdiff.classifier_train``): works offline
  class accuracy   the same classifier's accuracy on the samples' intended labels
  IS               Inception Score on that classifier's logits (Salimans et al. 2016)
  precision/recall k-NN manifolds, k = 3 (Kynkaanniemi et al. 2019), own features
  KID              polynomial-kernel MMD^2 (Binkowski et al. 2018), own features
  Inception FID    only when the pytorch-fid weights file is configured
                   (``config.eval.inception_weights`` or $JAXDIFF_INCEPTION_WEIGHTS)

The feature network is trained once per dataset (``--mode=train_classifier``, or automatically
when missing) into ``config.eval.feature_network_dir`` (default:
``$JAXDIFF_CACHE/feature_networks/<dataset>``, with JAXDIFF_CACHE defaulting to
~/.cache/jaxdiff), saved with its SHA-256.  Reference statistics of the held-out split are stored
beside it with their own SHA-256, and are refused when either checksum does not match.
Results go to ``<samples dir>/eval.json`` and ``eval.md``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxdiff import config as C
from jaxdiff import sample as S
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.classifier_train import load_feature_network, train_classifier
from jaxdiff.data import get_source
from jaxdiff import metrics as M


def dataset_name(data_cfg) -> str:
    return data_cfg.tfds_name if data_cfg.name == "tfds" else data_cfg.name


def feature_network_dir(config) -> str:
    e = config.eval
    if e.feature_network_dir:
        return e.feature_network_dir
    cache = os.environ.get("JAXDIFF_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                         "jaxdiff"))
    return os.path.join(cache, "feature_networks", dataset_name(config.data).replace("/", "_"))


def train_feature_network(config) -> dict:
    """``--mode=train_classifier``: trains (or retrains) the dataset's own feature network."""
    e = config.eval
    out = feature_network_dir(config)
    manifest = train_classifier(config.data, out, steps=int(e.classifier_steps),
                                batch_size=int(e.classifier_batch_size), seed=int(e.classifier_seed))
    print(f"feature network for {manifest['dataset']}: held-out accuracy "
          f"{manifest['heldout_accuracy']:.4f}, sha256 {manifest['sha256'][:12]}..., in {out}",
          flush=True)
    return manifest


def _feature_network(config):
    path = feature_network_dir(config)
    if not os.path.exists(os.path.join(path, "feature_network.json")):
        if not config.eval.train_classifier_if_missing:
            raise FileNotFoundError(f"no feature network in {path}: run --mode=train_classifier "
                                    f"or set config.eval.train_classifier_if_missing=True")
        train_feature_network(config)
    return load_feature_network(path), path


def _reference(network, directory: str, config, tag: str):
    """Held-out reference statistics for ``network``; computed and stored when missing."""
    path = os.path.join(directory, f"reference_{tag}_heldout.npz")
    if not os.path.exists(path):
        M.compute_reference(path, network, get_source(config.data, "heldout"),
                            dataset=dataset_name(config.data), split="heldout")
    return M.load_reference(path, network.checksum), path


def samples_dir(config, workdir: str) -> str:
    """The directory the sampling job with this config writes to."""
    s = config.sample
    if s.out_name:
        return os.path.join(workdir, "samples", s.out_name)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    step = int(s.checkpoint_step)
    if step < 0:
        ckpt = Checkpointer(ckpt_dir, async_save=False) if os.path.isdir(ckpt_dir) else None
        step = None if ckpt is None else ckpt.latest_step()
        if ckpt is not None:
            ckpt.close()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: train first")
    source = get_source(config.data, "heldout")
    proto = S.protocol(config, source.num_classes, source.image_shape, step)
    return os.path.join(workdir, "samples", S.protocol_tag(proto))


def _to_float(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float32) / 127.5 - 1.0


def image_metrics(network, reference, images_uint8, labels) -> dict:
    """All metrics of one feature network for uint8 samples (N, H, W, C) with labels (N,)."""
    feats, logits = network.features_and_logits(_to_float(images_uint8))
    mu, sigma = M.feature_statistics(feats)
    out = dict(fd=M.frechet_distance(mu, sigma, reference.mu, reference.sigma))
    if reference.features is not None:
        p, r = M.precision_recall(reference.features, feats, k=3)
        size = min(1000, len(feats), len(reference.features))
        kid, kid_std = M.kernel_inception_distance(reference.features, feats, subset_size=size)
        out.update(precision=p, recall=r, kid=kid, kid_std=kid_std)
    is_mean, is_std = M.inception_score(logits, num_splits=min(10, max(1, len(logits) // 100)))
    out.update(inception_score=is_mean, inception_score_std=is_std)
    return out, logits


def evaluate_job(config, workdir: str) -> dict:
    """Runs the metrics on the sampling job's shards; returns (and writes) the results."""
    C.validate(config)
    out_dir = samples_dir(config, workdir)
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"no samples in {out_dir}: run --mode=sample with this config "
                                f"first")
    images, labels, proto = S.load_samples(out_dir)
    network, net_dir = _feature_network(config)
    reference, ref_path = _reference(network, net_dir, config, "own")
    own, logits = image_metrics(network, reference, images, labels)
    results = dict(protocol=proto, samples_dir=out_dir, num_samples=int(len(images)),
                   own_feature_network=dict(name=network.name, sha256=network.checksum,
                                            directory=net_dir),
                   reference=dict(path=ref_path, **{k: reference.metadata[k] for k in
                                                    ("dataset", "split", "count")}),
                   own_features=own)
    if proto["num_classes"] > 0:
        results["class_accuracy"] = float(np.mean(np.argmax(logits, -1) == labels))
    weights = config.eval.inception_weights or os.environ.get(M.WEIGHTS_ENV, "")
    if weights:
        inception = M.load_inception(weights)
        inc_ref, inc_path = _reference(inception, net_dir, config, "inception")
        inc, _ = image_metrics(inception, inc_ref, images, labels)
        results["inception"] = dict(inc, weights_sha256=inception.checksum, reference=inc_path)
    else:
        results["inception"] = None
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "eval.md"), "w") as f:
        f.write(summary_markdown(results))
    line = f"own-feature FD {own['fd']:.3f}"
    if "class_accuracy" in results:
        line += f"  class accuracy {results['class_accuracy']:.4f}"
    line += (f"  precision {own.get('precision', float('nan')):.3f}  recall "
             f"{own.get('recall', float('nan')):.3f}  ({len(images)} samples, "
             f"{proto['sampler']} {proto['steps']} steps, CFG {proto['cfg_scale']:g}; "
             f"details in {os.path.join(out_dir, 'eval.md')})")
    print(line, flush=True)
    return results


def summary_markdown(r: dict) -> str:
    p = r["protocol"]
    own = r["own_features"]
    lines = [
        "# Evaluation", "",
        "## Protocol", "",
        f"- samples: {r['num_samples']} from checkpoint step {p['checkpoint_step']} "
        f"(EMA index {p['ema_index']}), labels {p['labels']}, seed {p['seed']} "
        f"(sample i uses fold_in(key(seed), i))",
        f"- sampler: {p['sampler']}, {p['steps']} steps on the {p['grid']} grid, NFE {p['nfe']} "
        f"({p['network_evaluations_per_sample']} network evaluations per sample with CFG)",
        f"- CFG scale {p['cfg_scale']} on t in ({p['guidance_interval'][0]}, "
        f"{p['guidance_interval'][1]}]",
        f"- reference: {r['reference']['dataset']} {r['reference']['split']} split, "
        f"{r['reference']['count']} images ({r['reference']['path']})",
        f"- own feature network: {r['own_feature_network']['name']} "
        f"(sha256 {r['own_feature_network']['sha256']})", "",
        "## Results", "",
        "| metric | value |", "|---|---|",
        f"| own-feature FD | {own['fd']:.4f} |",
    ]
    if "class_accuracy" in r:
        lines.append(f"| class accuracy (own classifier) | {r['class_accuracy']:.4f} |")
    for key, name in (("precision", "precision (k=3)"), ("recall", "recall (k=3)"),
                      ("kid", "KID (own features)"), ("inception_score", "IS (own classifier)")):
        if key in own:
            lines.append(f"| {name} | {own[key]:.4f} |")
    inc = r.get("inception")
    if inc:
        lines.append(f"| Inception FID (pt_inception-2015-12-05) | {inc['fd']:.4f} |")
    else:
        lines.append("| Inception FID | not computed (no pytorch-fid weights configured) |")
    return "\n".join(lines) + "\n"
