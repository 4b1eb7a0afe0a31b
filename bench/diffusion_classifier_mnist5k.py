"""Diffusion Classifier (Li et al., ICCV 2023) on MNIST-5k with the README's trained model.

Protocol: the class-conditional U-Net that ``configs/mnist5k.py`` trains on the 4,000-image
training split (the README's main job, or ``--mode=train`` alone), its EMA parameters, no
guidance; the 1,000 held-out images (100 per class), every class a candidate.
  * the headline: ``--mode=classify`` (``jaxdiff.classify_job``) with the config's protocol
    (default: stratified t grid, squared L2, uniform weighting, stages n = 8, 48 keeping 3, 1:
    200 NFE per image, seed 0), next to jaxdiff's own discriminative CNN on the same images;
  * accuracy vs NFE per image on an evenly strided subset (``--curve-images``): single-stage banks
    of n stratified timesteps (10 n NFE) and the pruned protocol.

Needs a trained ``--workdir`` (it names the command when the checkpoint is missing).  Writes
docs/diffusion_classifier_mnist5k.json, docs/diffusion_classifier_mnist5k.png and the MNIST-5k
section of docs/reproductions.md.

Run:  python3 bench/diffusion_classifier_mnist5k.py --workdir runs/mnist5k
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]

from common import cpu_info, load_average, replace_section  # noqa: E402

from jaxdiff import classify as DC  # noqa: E402
from jaxdiff.classify_job import classify_job, heldout_subset, trained_denoiser  # noqa: E402
from jaxdiff.config import load_config_file  # noqa: E402
from jaxdiff.data import get_source  # noqa: E402
from jaxdiff.sample import checkpoint_dir  # noqa: E402

DOCS = os.path.join(ROOT, "docs")
SECTION_HEADER = "# Reproductions\n"


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=value", ...]`` -> {"a.b": value}, values parsed as Python literals where they
    parse (``classify.n_samples=(16,64)``), else kept as strings."""
    out = {}
    for item in items:
        dotted, raw = item.split("=", 1)
        try:
            out[dotted] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[dotted] = raw
    return out


def curve(config, workdir: str, num_images: int, banks: list[int]) -> list[dict]:
    """Accuracy and seconds per image for single-stage banks of n entries and the config's
    pruned protocol, on ``num_images`` evenly strided held-out images."""
    cc = config.classify
    source = get_source(config.data, "heldout")
    den, _ = trained_denoiser(config, workdir, source)
    idx = heldout_subset(num_images, len(source))
    images, labels = source.get(idx)
    specs = [dict(n_samples=n) for n in banks]
    specs.append(dict(n_samples=tuple(cc.n_samples), keep=tuple(cc.keep)))
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        preds, nfe = [], None
        for start in range(0, idx.size, int(cc.batch_size)):
            sl = slice(start, start + int(cc.batch_size))
            res = DC.diffusion_classify(
                den, images[sl], np.arange(source.num_classes), jax.random.key(int(cc.seed)),
                num_classes=source.num_classes, loss=cc.loss, weighting=cc.weighting,
                grid=cc.grid, time_space=cc.time_space, indices=idx[sl],
                chunk_size=int(cc.chunk_size), **spec)
            preds.append(np.asarray(res.prediction))
            nfe = res.nfe
        seconds = time.perf_counter() - t0
        acc = float(np.mean(np.concatenate(preds) == labels))
        rows.append(dict(n_samples=list(np.atleast_1d(spec["n_samples"]).tolist()),
                         keep=list(spec.get("keep", [source.num_classes])), nfe_per_image=nfe,
                         accuracy=acc, seconds_per_image=seconds / idx.size,
                         images=int(idx.size)))
        print(f"curve {rows[-1]}", flush=True)
    return rows


def plot(main: dict, rows: list[dict], path: str) -> None:
    single = [r for r in rows if len(r["n_samples"]) == 1]
    pruned = [r for r in rows if len(r["n_samples"]) > 1]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([r["nfe_per_image"] for r in single], [r["accuracy"] for r in single], "o-",
            label="single stage, n timesteps (10 n NFE)")
    ax.plot([r["nfe_per_image"] for r in pruned], [r["accuracy"] for r in pruned], "s",
            ms=8, label=f"pruned {pruned[0]['n_samples']} keep {pruned[0]['keep']}")
    ax.axhline(main["discriminative_baseline"]["accuracy"], color="gray", ls="--",
               label="own discriminative CNN")
    ax.set_xscale("log")
    ax.set_xlabel("NFE per image")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"Diffusion Classifier, MNIST-5k ({rows[0]['images']} images)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(report: dict) -> str:
    m, p = report["main"], report["main"]["protocol"]
    lines = [
        "### MNIST-5k (trained model)", "",
        f"Generated by `{report['command']}` on {report['date']}.", "",
        f"- Model: `configs/mnist5k.py` trained on the 4,000-image training split, checkpoint step "
        f"{m['checkpoint_step']} (last training run: {report['train_summary']}), EMA parameters, no guidance.",
        f"- Inputs: {m['num_images']} held-out images (100 per class), all 10 classes as "
        "candidates.",
        f"- Bank: stratified grid in {p['time_space']}, {p['loss']} error, {p['weighting']} "
        f"weighting, stages n = {p['n_samples']} keeping {p['keep']} "
        f"({m['nfe_per_image']} NFE per image), seed {p['seed']}, noise shared across classes.",
        f"- Machine: {report['machine']}; {report['seconds']:.0f} s for the headline run.", "",
        "| classifier | held-out accuracy | NFE / image |", "|---|---:|---:|",
        f"| Diffusion Classifier (jaxdiff, zero-shot from the generative model) | "
        f"{m['accuracy']:.3f} | {m['nfe_per_image']} |",
        f"| own discriminative CNN (`{m['discriminative_baseline']['name']}`, the evaluation "
        f"job's feature network) | {m['discriminative_baseline']['accuracy']:.3f} | - |", "",
        f"Accuracy vs NFE on {report['curve'][0]['images']} evenly strided held-out images "
        "(`docs/diffusion_classifier_mnist5k.png`):", "",
        "| bank (n_samples / keep) | NFE / image | accuracy | s / image |", "|---|---:|---:|---:|"]
    for r in report["curve"]:
        lines.append(f"| {r['n_samples']} / {r['keep']} | {r['nfe_per_image']} | "
                     f"{r['accuracy']:.3f} | {r['seconds_per_image']:.3f} |")
    lines += ["", "Confusion matrix of the headline run (rows: true class, columns: predicted):",
              "", "| | " + " | ".join(str(j) for j in range(10)) + " |", "|---" * 11 + "|"]
    for i, row in enumerate(m["confusion"]):
        lines.append(f"| {i} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "mnist5k"))
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "mnist5k.py"))
    p.add_argument("--curve-images", type=int, default=200)
    p.add_argument("--banks", default="1,2,4,8,16", help="single-stage bank sizes of the curve")
    p.add_argument("--no-write", action="store_true", help="print only (smoke test)")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=value, e.g. "
                   "classify.num_images=100")
    args = p.parse_args(argv)
    config = load_config_file(args.config, parse_overrides(args.overrides))
    try:
        checkpoint_dir(args.workdir)
    except FileNotFoundError as e:
        sys.exit(f"{e}, e.g. python3 -m jaxdiff.main --config="
                 f"{os.path.relpath(args.config, ROOT)} --workdir={args.workdir} --mode=train")
    load_start = load_average()
    t0 = time.perf_counter()
    main_result = classify_job(config, args.workdir)
    seconds = time.perf_counter() - t0
    rows = curve(config, args.workdir, args.curve_images, [int(b) for b in args.banks.split(",")])
    summary_path = os.path.join(args.workdir, "train_summary.json")
    train_summary = "no train_summary.json"
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            s = json.load(f)
        train_summary = f"{s['step']} of {s['num_steps']} steps, stopped: {s['stopped']}"
    info = cpu_info()
    report = dict(
        command="python3 bench/diffusion_classifier_mnist5k.py " + " ".join(argv or sys.argv[1:]),
        date=time.strftime("%Y-%m-%d"), seconds=seconds, train_summary=train_summary,
        machine=(f"{info['cpu_model']}, {info['cores']} cores, jax {jax.__version__}, "
                 f"backend {jax.default_backend()}, {jax.device_count()} device(s); 1-minute "
                 f"load {load_start:.2f} at start, {load_average():.2f} at end"),
        main={k: v for k, v in main_result.items() if k != "path"}, curve=rows)
    print(json.dumps(dict(accuracy=main_result["accuracy"], nfe=main_result["nfe_per_image"])))
    if args.no_write:
        return
    with open(os.path.join(DOCS, "diffusion_classifier_mnist5k.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(main_result, rows, os.path.join(DOCS, "diffusion_classifier_mnist5k.png"))
    replace_section(os.path.join(DOCS, "reproductions.md"), "dc-mnist5k", markdown(report),
                    SECTION_HEADER)


if __name__ == "__main__":
    main()
