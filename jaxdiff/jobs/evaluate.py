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

The feature network (``config.eval.feature_network``): 'auto' (the default) takes the network
shipped inside the package for the dataset when there is one (``jaxdiff/assets/feature_networks``,
checksummed: the same feature space, hence comparable FDs, on every machine), and otherwise
one trained once on this machine ('trained': ``--mode=train_classifier``, or automatically when
missing, into ``config.eval.feature_network_dir``, default
``$JAXDIFF_CACHE/feature_networks/<dataset>``, JAXDIFF_CACHE defaulting to ~/.cache/jaxdiff),
saved with its SHA-256 (``jaxdiff.classifier_train``).  Reference statistics of the held-out
split are stored with their own SHA-256, and refused when either checksum does not match.
Results go to ``<samples dir>/eval.json`` and ``eval.md``.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxdiff import config as C
from jaxdiff import metrics as M
from jaxdiff import classifier_train as CT
from jaxdiff.data import dataset_name, get_source
from jaxdiff.errors import MissingInputError
from jaxdiff.jobs import samples_io as IO
from jaxdiff.jobs.spec import register_job
from jaxdiff.jsonio import write_json


def default_eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        feature_network="auto",            # 'auto' | 'pinned' (shipped) | 'trained' (here)
        feature_network_dir="",            # '' -> $JAXDIFF_CACHE/feature_networks/<dataset>
        train_classifier_if_missing=True,
        classifier_steps=1500, classifier_batch_size=128, classifier_seed=0,
        inception_weights="",              # pytorch-fid weights file ('' -> $JAXDIFF_INCEPTION_WEIGHTS)
        require_standard_inception=True))  # refuse other weights than the published file


def _check_eval(e, config, **_) -> None:
    C.choice(e.feature_network, "eval.feature_network", CT.FEATURE_NETWORK_CHOICES)
    if e.feature_network == "pinned" and CT.pinned_feature_network_dir(
            dataset_name(config.data)) is None:
        raise C.ConfigError(f"config.eval.feature_network: the package ships no pinned feature "
                            f"network for {dataset_name(config.data)!r}; use 'trained' or 'auto'")
    C.number(e.classifier_steps, "eval.classifier_steps", low=1, integer=True)
    C.number(e.classifier_batch_size, "eval.classifier_batch_size", low=1, integer=True)
    C.number(e.classifier_seed, "eval.classifier_seed", low=0, integer=True)


C.register_section("eval", defaults=default_eval_config, check=_check_eval)


@register_job("train_classifier")
def train_classifier_job(config, workdir: str) -> dict:
    """``--mode=train_classifier``: trains (or retrains) the dataset's own feature network."""
    del workdir
    C.validate(config)
    return CT.train_feature_network(config)


def _reference(network, directory: str, config, tag: str):
    """Held-out reference statistics for ``network`` in ``directory``; computed and stored
    when missing."""
    path = os.path.join(directory, f"reference_{tag}_heldout.npz")
    if not os.path.exists(path):
        M.compute_reference(path, network, get_source(config.data, "heldout"),
                            dataset=dataset_name(config.data), split="heldout")
    return M.load_reference(path, network.checksum), path


def image_metrics(network, reference, images_uint8) -> tuple[dict, np.ndarray]:
    """(all metrics of one feature network for uint8 samples (N, H, W, C), their logits (N, K))."""
    feats, logits = network.features_and_logits(IO.from_storage(images_uint8, "image"))
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


def own_feature_metrics(config, images_uint8, labels=None, space=None) -> dict:
    """The own-feature metrics of uint8 images (N, H, W, C) against the held-out split:
    ``own_features`` (FD, precision, recall, KID, IS), ``class_accuracy`` of the intended
    ``labels`` (N,) when given, and which network and reference were used.  ``space`` defaults
    to ``own_feature_space(config)`` (the pinned network where the package ships one)."""
    space = CT.own_feature_space(config) if space is None else space
    network = space.network
    reference, ref_path = _reference(network, space.reference_dir, config, "own")
    own, logits = image_metrics(network, reference, images_uint8)
    out = dict(own_feature_network=dict(name=network.name, sha256=network.checksum,
                                        directory=space.directory, pinned=space.pinned),
               reference=dict(path=ref_path, **{k: reference.metadata[k] for k in
                                                ("dataset", "split", "count")}),
               own_features=own)
    if labels is not None:
        out["class_accuracy"] = float(np.mean(np.argmax(logits, -1) == labels))
    return out


def _inception_weights(config) -> str:
    """The configured Inception weights file ('' when FID is not asked for), checked."""
    weights = config.eval.inception_weights or os.environ.get(M.WEIGHTS_ENV, "")
    if weights:
        M.check_weights(weights, bool(config.eval.require_standard_inception))
    return weights


def _samples_to_evaluate(config, workdir: str) -> str:
    heldout = get_source(config.data, "heldout")
    out_dir = IO.samples_dir(config, workdir, heldout.num_classes, heldout.example_shape,
                             heldout.kind)
    if not os.path.isfile(os.path.join(out_dir, "manifest.json")):
        raise MissingInputError(f"no samples in {out_dir}: run --mode=sample with this config "
                                f"first")
    return out_dir


def _preflight(config, workdir: str, earlier) -> None:
    """Before any job runs: the Inception weights' checksum, and the samples (unless a train
    or sample job of the same command makes them)."""
    _inception_weights(config)
    if not {"train", "sample"} & set(earlier):
        _samples_to_evaluate(config, workdir)


@register_job("eval", preflight=_preflight)
def evaluate_job(config, workdir: str) -> dict:
    """Runs the metrics on the sampling job's shards; returns (and writes) the results."""
    C.validate(config)
    weights = _inception_weights(config)
    out_dir = _samples_to_evaluate(config, workdir)
    stored, labels, proto = IO.load_samples(out_dir)
    if proto["kind"] != "image":
        return _signal_evaluation(config, out_dir, stored, labels, proto)
    images = stored
    space = CT.own_feature_space(config)
    network = space.network
    results = dict(protocol=proto, samples_dir=out_dir, num_samples=int(len(images)),
                   **own_feature_metrics(config, images, labels if proto["num_classes"] > 0
                                         else None, space))
    own = results["own_features"]
    if weights:
        inception = M.load_inception(
            weights, require_standard=bool(config.eval.require_standard_inception))
        inc_ref, inc_path = _reference(inception, space.reference_dir, config, "inception")
        inc, _ = image_metrics(inception, inc_ref, images)
        results["inception"] = dict(inc, weights_sha256=inception.checksum, reference=inc_path)
    else:
        results["inception"] = None
    write_json(os.path.join(out_dir, "eval.json"), results)
    with open(os.path.join(out_dir, "eval.md"), "w") as f:
        f.write(summary_markdown(results))
    line = f"own-feature FD {own['fd']:.3f}"
    if "class_accuracy" in results:
        line += f"  class accuracy {results['class_accuracy']:.4f}"
    line += (f"  precision {own.get('precision', float('nan')):.3f}  recall "
             f"{own.get('recall', float('nan')):.3f}  ({len(images)} samples, "
             f"{proto['sampler']} {proto['steps']} steps, guidance "
             f"{IO.guidance_tag(proto['guidance'])}; "
             f"details in {os.path.join(out_dir, 'eval.md')})")
    print(line, flush=True)
    if not space.pinned:
        print(f"(features of a network trained on this machine, sha256 {network.checksum[:12]}"
              f"...: FD, precision and recall compare only with runs evaluated with it)",
              flush=True)
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
        f"({p['network_evaluations_per_sample']} network evaluations per sample with guidance)",
        f"- guidance: {_guidance_text(p['guidance'])}",
        f"- reference: {r['reference']['dataset']} {r['reference']['split']} split, "
        f"{r['reference']['count']} images ({r['reference']['path']})",
        f"- own feature network: {r['own_feature_network']['name']} "
        f"(sha256 {r['own_feature_network']['sha256']}; "
        + ("pinned: shipped in the package, the same on every machine)"
           if r['own_feature_network'].get('pinned') else
           "trained on this machine: compare only with runs evaluated with it)"), "",
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


def _guidance_text(g: dict) -> str:
    if g["name"] == "cfg":
        return f"CFG scale {g['scale']} on t in ({g['t_lo']}, {g['t_hi']}]"
    fields = ", ".join(f"{k}={v}" for k, v in sorted(g.items()) if k != "name")
    return g["name"] + (f" ({fields})" if fields else "")


def _signal_evaluation(config, out_dir: str, samples, labels, proto) -> dict:
    """Metrics of non-image samples (signals): FD and RBF-MMD on the raw values against the
    held-out split, and class accuracy under a classifier fitted on the training split."""
    from jaxdiff.metrics.signals import signal_metrics

    heldout = get_source(config.data, "heldout")
    metrics = signal_metrics(IO.from_storage(samples, proto["kind"]),
                             labels if proto["num_classes"] > 0 else None, heldout,
                             get_source(config.data, "train"))
    results = dict(protocol=proto, samples_dir=out_dir, num_samples=int(len(samples)),
                   reference=dict(dataset=dataset_name(config.data), split="heldout",
                                  count=int(len(heldout))),
                   signal_metrics=metrics)
    if "class_accuracy" in metrics:
        results["class_accuracy"] = metrics["class_accuracy"]
    write_json(os.path.join(out_dir, "eval.json"), results)
    lines = ["# Evaluation (signals)", "", f"- samples: {len(samples)} from checkpoint step "
             f"{proto['checkpoint_step']}, {proto['sampler']} {proto['steps']} steps, guidance: "
             f"{_guidance_text(proto['guidance'])}",
             f"- reference: {results['reference']['dataset']} held-out split, "
             f"{len(heldout)} examples", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float)]
    with open(os.path.join(out_dir, "eval.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
          + f"  ({len(samples)} samples; details in {os.path.join(out_dir, 'eval.md')})",
          flush=True)
    return results
