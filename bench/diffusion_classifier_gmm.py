"""Diffusion Classifier (Li et al., ICCV 2023) on an exact 2-D Gaussian-mixture oracle.

Protocol: 5 classes x 2 components on a circle of radius 3, std 0.6, equal weights (overlapping
classes with equal priors, so the Bayes classifier is argmax_c log p(x0 | c)); 300 test points
per class drawn from the mixture; the exact conditional denoiser under the VP-cosine schedule;
the paper's stratified grid (midpoints of n bins of [t_min, t_max]) and squared-L2 error.

  * accuracy and agreement with the Bayes classifier vs bank size n, for shared vs independent
    (t, eps) per class and uniform (paper) vs ELBO weighting;
  * adaptive pruning: accuracy and NFE per image of several stage specs vs the full evaluation.

Writes docs/diffusion_classifier_gmm.json and docs/diffusion_classifier_gmm.png.
Run: PYTHONPATH=. python bench/diffusion_classifier_gmm.py
"""
from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import classify as C
from jaxdiff import schedules
from jaxdiff.toy import gmm as G

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, PER_CLASS = 5, 300
BANK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PRUNING = (((512,), (5,)), ((16, 512), (2, 1)), ((8, 64, 512), (3, 2, 1)), ((4, 32, 512), (3, 2, 1)))


def mixture() -> G.GMM:
    k = 2 * NUM_CLASSES
    angles = 2 * np.pi * np.arange(k) / k
    means = 3.0 * np.stack([np.cos(angles), np.sin(angles)], -1)
    return G.make_gmm(means, 0.6, None, np.arange(k) % NUM_CLASSES, NUM_CLASSES)


def main():
    gmm = mixture()
    den = G.oracle_denoiser(gmm, schedules.VPCosine())
    x0 = jnp.concatenate([gmm.sample(jax.random.fold_in(jax.random.key(1), c), PER_CLASS, c)
                          for c in range(NUM_CLASSES)])
    labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    bayes = np.asarray(gmm.class_log_posterior(x0, 1.0, 0.0)).argmax(1)
    bayes_acc = float(np.mean(bayes == labels))

    def run(**kw):
        t0 = time.perf_counter()
        res = C.diffusion_classify(den, x0, jnp.arange(NUM_CLASSES), jax.random.key(0),
                                   num_classes=NUM_CLASSES, grid="stratified", chunk_size=512,
                                   **kw)
        pred = np.asarray(res.prediction)
        return res, dict(accuracy=float(np.mean(pred == labels)),
                         bayes_agreement=float(np.mean(pred == bayes)), nfe=res.nfe,
                         seconds=round(time.perf_counter() - t0, 2))

    curves = {}
    for weighting in ("uniform", "elbo"):
        for shared in (True, False):
            name = f"{weighting}/{'shared' if shared else 'independent'}"
            curves[name] = [dict(n=n, **run(n_samples=n, weighting=weighting,
                                             shared_noise=shared)[1]) for n in BANK_SIZES]
            print(name, [(c["n"], round(c["accuracy"], 3)) for c in curves[name]], flush=True)

    pruning, full_pred = [], None
    for n_samples, keep in PRUNING:
        res, row = run(n_samples=list(n_samples), keep=list(keep), weighting="uniform")
        pred = np.asarray(res.prediction)
        full_pred = pred if full_pred is None else full_pred
        row.update(n_samples=list(n_samples), keep=list(keep),
                   agreement_with_full=float(np.mean(pred == full_pred)))
        pruning.append(row)
        print(row, flush=True)

    out = dict(
        protocol=dict(mixture="5 classes x 2 components, circle radius 3, std 0.6, equal weights",
                      test_points=int(x0.shape[0]), schedule="vp_cosine", grid="stratified",
                      time_space="t", loss="l2", seed=0),
        bayes_accuracy=bayes_acc, curves=curves, pruning=pruning,
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpu_count=os.cpu_count(), devices=[str(d) for d in jax.devices()],
                     jax=jax.__version__))
    with open(os.path.join(ROOT, "docs", "diffusion_classifier_gmm.json"), "w") as f:
        json.dump(out, f, indent=1)
    plot(curves, bayes_acc, os.path.join(ROOT, "docs", "diffusion_classifier_gmm.png"))


def plot(curves, bayes_acc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"uniform/shared": "C0-o", "uniform/independent": "C0--o",
              "elbo/shared": "C1-s", "elbo/independent": "C1--s"}
    for name, rows in curves.items():
        ax.plot([r["n"] for r in rows], [r["accuracy"] for r in rows], styles[name],
                label=name, ms=4)
    ax.axhline(bayes_acc, color="k", lw=1, ls=":", label=f"Bayes ({bayes_acc:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bank size n (timesteps x noises per class)")
    ax.set_ylabel("accuracy")
    ax.set_title("Diffusion Classifier, exact 2-D GMM denoiser (5 classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
