"""``--mode=classify``: zero-shot classification of a dataset split with a trained model.

Runs the Diffusion Classifier (``jaxdiff.classify``; Li et al., ICCV 2023) with the trained
conditional denoiser of ``WORKDIR`` (chosen EMA, no guidance) over ``config.classify.num_images``
images of the held-out split (``heldout_subset``: evenly strided through the split, so a subset of
a class-sorted split such as mnist5k's still holds every class), with the classes
``config.classify.candidates`` (empty: every class) as candidates, and reports accuracy, the
confusion matrix and NFE per image, next to the accuracy of jaxdiff's own discriminative
classifier (the evaluation job's feature network) on the same images.
Results: ``WORKDIR/classify/<protocol tag>.json`` and ``.md``.
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from jaxdiff import classify as DC
from jaxdiff import config as C
from jaxdiff import parallel
from jaxdiff.classifier_train import own_feature_space
from jaxdiff.data import dataset_name, get_source
from jaxdiff.errors import ConfigError
from jaxdiff.jobs.spec import (build_spec, checkpoint_dir, needs_checkpoint, register_job,
                               restore_model)
from jaxdiff.jsonio import write_json


def default_classify_config() -> ml_collections.ConfigDict:
    """``--mode=classify``: the Diffusion Classifier protocol."""
    return ml_collections.ConfigDict(dict(
        num_images=1000,                   # N held-out images, evenly strided through the split
        candidates=(),                     # candidate classes; () = every class
        n_samples=(8, 48),                 # cumulative bank sizes per stage (Li et al. Sec. 3.2)
        keep=(3, 1),                       # survivors after each stage
        loss="l2", weighting="uniform", grid="stratified", time_space="t",
        batch_size=50, chunk_size=64, seed=0))


def _check_classify(c, config, **_) -> None:
    for field in ("num_images", "batch_size", "chunk_size"):
        C.number(c[field], f"classify.{field}", low=1, integer=True)
    try:
        DC.plan_stages(tuple(c.n_samples), tuple(c.keep), 2)
    except ValueError as e:
        raise ConfigError(f"config.classify.n_samples / keep: {e}") from None
    for field, allowed in (("loss", DC.LOSSES), ("weighting", DC.WEIGHTINGS),
                           ("grid", DC.GRIDS), ("time_space", DC.TIME_SPACES)):
        C.choice(c[field], f"classify.{field}", allowed)
    if c.weighting == "elbo" and c.loss != "l2":
        raise ConfigError("config.classify.weighting: 'elbo' needs loss 'l2' (the ELBO is a "
                          f"squared error), got loss {c.loss!r}")
    if len(c.candidates) == 1 or any(isinstance(v, bool) or not isinstance(v, int)
                                     for v in c.candidates):
        raise ConfigError(f"config.classify.candidates: give () for every class or at least "
                          f"two int class indices, got {tuple(c.candidates)}")


C.register_section("classify", defaults=default_classify_config, check=_check_classify)


def protocol(cc) -> dict:
    return dict(n_samples=list(cc.n_samples), keep=list(cc.keep), loss=cc.loss,
                weighting=cc.weighting, grid=cc.grid, time_space=cc.time_space,
                candidates=list(cc.candidates), num_images=int(cc.num_images),
                seed=int(cc.seed))


def heldout_subset(num_images: int, split_size: int) -> np.ndarray:
    """(n,) int64: n = min(num_images, split_size) indices evenly strided through [0, split_size).

    Index i * split_size // n for i < n: the whole split when n == split_size, and otherwise the
    same fraction of every contiguous block (every class of a class-sorted split)."""
    n = min(int(num_images), int(split_size))
    return np.arange(n, dtype=np.int64) * split_size // n


def candidate_classes(cc, num_classes: int) -> np.ndarray:
    """The candidate class indices of ``config.classify.candidates`` (empty: all classes)."""
    cand = np.arange(num_classes) if len(cc.candidates) == 0 else np.asarray(cc.candidates)
    try:
        return DC.check_candidates(cand, num_classes)
    except ValueError as e:
        raise ConfigError(f"config.classify.candidates: {e}") from None


def _preflight(config, workdir: str, earlier) -> None:
    """The candidates against the data (a config error first), then the checkpoint."""
    candidate_classes(config.classify, get_source(config.data, "heldout").num_classes)
    needs_checkpoint(config, workdir, earlier)


@register_job("classify", preflight=_preflight)
def classify_job(config, workdir: str) -> dict:
    C.validate(config)
    cc = config.classify
    source = get_source(config.data, "heldout")
    if source.num_classes < 2:
        raise ConfigError("config.data: the diffusion classifier needs a class-conditional "
                         f"model, but {source.name} has {source.num_classes} class(es)")
    candidates = candidate_classes(cc, source.num_classes)
    pool = np.arange(len(source))
    if candidates.size < source.num_classes:  # only images of the candidate classes
        pool = pool[np.isin(source.get(pool)[1], candidates)]
    if pool.size == 0:
        raise ConfigError(f"config.classify.candidates: no held-out image of {source.name} has "
                         f"one of the classes {candidates.tolist()}")
    subset = pool[heldout_subset(int(cc.num_images), pool.size)]
    n = subset.size
    mesh = parallel.make_mesh(config.mesh)
    checkpoint_dir(workdir)
    spec = build_spec(config, source.num_classes, source.example_shape, source.kind)
    params, step = restore_model(spec, workdir)
    den = spec.denoiser(params)
    key = jax.random.key(int(cc.seed))
    preds, labels_all, nfe = [], [], None
    from tqdm import tqdm
    for start in tqdm(range(0, n, int(cc.batch_size)), desc="classify", unit="batch",
                      disable=jax.process_index() != 0):
        idx = subset[start:start + int(cc.batch_size)]
        images, labels = source.get(idx)
        res = DC.diffusion_classify(
            den, images, candidates, key, num_classes=source.num_classes,
            n_samples=tuple(cc.n_samples), keep=tuple(cc.keep), loss=cc.loss,
            weighting=cc.weighting, grid=cc.grid, time_space=cc.time_space,
            indices=idx, chunk_size=int(cc.chunk_size),
            mesh=mesh if len(idx) % mesh.size == 0 and mesh.size > 1 else None)
        preds.append(np.asarray(res.prediction))
        labels_all.append(labels)
        nfe = res.nfe
    pred, labels = np.concatenate(preds), np.concatenate(labels_all)
    confusion = np.zeros((source.num_classes,) * 2, np.int64)
    np.add.at(confusion, (labels, pred), 1)
    network = own_feature_space(config).network
    disc = candidates[np.argmax(network.logits(source.get(subset)[0])[:, candidates], -1)]
    proto = protocol(cc)
    result = dict(protocol=proto, checkpoint_step=step, dataset=dataset_name(config.data),
                  split="heldout", num_images=n, candidates=candidates.tolist(),
                  accuracy=float(np.mean(pred == labels)),
                  nfe_per_image=int(nfe), confusion=confusion.tolist(),
                  discriminative_baseline=dict(name=network.name, sha256=network.checksum,
                                               accuracy=float(np.mean(disc == labels))))
    cand_tag = "" if candidates.size == source.num_classes else \
        "-c" + "_".join(map(str, candidates))
    tag = (f"step{step}-n{'-'.join(map(str, cc.n_samples))}-keep{'-'.join(map(str, cc.keep))}"
           f"-{cc.loss}-{cc.weighting}-{cc.grid}-{cc.time_space}{cand_tag}-{n}")
    out = os.path.join(workdir, "classify")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, tag + ".json"), result)
    with open(os.path.join(out, tag + ".md"), "w") as f:
        f.write(_markdown(result))
    result["path"] = os.path.join(out, tag + ".json")
    print(f"diffusion classifier accuracy {result['accuracy']:.4f} at {nfe} NFE/image on {n} "
          f"held-out images; own discriminative classifier "
          f"{result['discriminative_baseline']['accuracy']:.4f}; {result['path']}", flush=True)
    return result


def _markdown(r: dict) -> str:
    p = r["protocol"]
    lines = ["# Diffusion Classifier", "",
             f"- model: checkpoint step {r['checkpoint_step']} of {r['dataset']}; "
             f"{r['num_images']} {r['split']} images (evenly strided through the split), "
             f"candidate classes {r['candidates']}",
             f"- bank: stages {p['n_samples']} keeping {p['keep']}, {p['grid']} grid in "
             f"{p['time_space']}, {p['loss']} error, {p['weighting']} weighting, "
             f"seed {p['seed']} (shared noise across classes)",
             "", "| classifier | accuracy | NFE / image |", "|---|---|---|",
             f"| diffusion classifier | {r['accuracy']:.4f} | {r['nfe_per_image']} |",
             f"| own discriminative CNN | {r['discriminative_baseline']['accuracy']:.4f} | - |",
             "", "Confusion matrix (rows: true class, columns: predicted):", ""]
    k = len(r["confusion"])
    lines.append("| | " + " | ".join(str(j) for j in range(k)) + " |")
    lines.append("|---" * (k + 1) + "|")
    for i, row in enumerate(r["confusion"]):
        lines.append(f"| {i} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
