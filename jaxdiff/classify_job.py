"""``--mode=classify``: zero-shot classification of a dataset split with a trained model.

Runs the Diffusion Classifier (``jaxdiff.classify``; Li et al., ICCV 2023) with the trained
conditional denoiser of ``WORKDIR`` (chosen EMA, no guidance) over the first
``config.classify.num_images`` images of the held-out split, every class a candidate, and reports
accuracy, the confusion matrix and NFE per image, next to the accuracy of jaxdiff's own
discriminative classifier (the evaluation job's feature network) on the same images.
Results: ``WORKDIR/classify/<protocol tag>.json`` and ``.md``.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from jaxdiff import classify as DC
from jaxdiff import config as C
from jaxdiff import parallel
from jaxdiff.data import get_source
from jaxdiff.evaluate import _feature_network, dataset_name
from jaxdiff.sample import restore_params
from jaxdiff.train import build_setup


def protocol(cc) -> dict:
    return dict(n_samples=list(cc.n_samples), keep=list(cc.keep), loss=cc.loss,
                weighting=cc.weighting, grid=cc.grid, time_space=cc.time_space,
                num_images=int(cc.num_images), seed=int(cc.seed))


def classify_job(config, workdir: str) -> dict:
    C.validate(config)
    cc = config.classify
    source = get_source(config.data, "heldout")
    if source.num_classes < 2:
        raise ValueError("config.data: the diffusion classifier needs a class-conditional "
                         f"model, but {source.name} has {source.num_classes} class(es)")
    n = min(int(cc.num_images), len(source))
    mesh = parallel.make_mesh(config.mesh)
    setup, state = build_setup(config, source.num_classes, source.image_shape)
    params, step = restore_params(config, workdir, setup, state)
    den = setup.denoiser(params)
    candidates = np.arange(source.num_classes)
    key = jax.random.key(int(cc.seed))
    preds, labels_all, nfe = [], [], None
    from tqdm import tqdm
    for start in tqdm(range(0, n, int(cc.batch_size)), desc="classify", unit="batch",
                      disable=jax.process_index() != 0):
        idx = np.arange(start, min(start + int(cc.batch_size), n))
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
    network, _ = _feature_network(config)
    disc = np.argmax(network.logits(source.get(np.arange(n))[0]), -1)
    proto = protocol(cc)
    result = dict(protocol=proto, checkpoint_step=step, dataset=dataset_name(config.data),
                  split="heldout", num_images=n, accuracy=float(np.mean(pred == labels)),
                  nfe_per_image=int(nfe), confusion=confusion.tolist(),
                  discriminative_baseline=dict(name=network.name, sha256=network.checksum,
                                               accuracy=float(np.mean(disc == labels))))
    tag = (f"step{step}-n{'-'.join(map(str, cc.n_samples))}-keep{'-'.join(map(str, cc.keep))}"
           f"-{cc.loss}-{cc.weighting}-{cc.grid}-{n}")
    out = os.path.join(workdir, "classify")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, tag + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, tag + ".md"), "w") as f:
        f.write(_markdown(result))
    print(f"diffusion classifier accuracy {result['accuracy']:.4f} at {nfe} NFE/image on {n} "
          f"held-out images; own discriminative classifier "
          f"{result['discriminative_baseline']['accuracy']:.4f}", flush=True)
    return result


def _markdown(r: dict) -> str:
    p = r["protocol"]
    lines = ["# Diffusion Classifier", "",
             f"- model: checkpoint step {r['checkpoint_step']} of {r['dataset']}; "
             f"{r['num_images']} {r['split']} images, all classes as candidates",
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
