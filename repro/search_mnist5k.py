"""Inference-time search on MNIST-5k (Ma et al., arXiv 2501.09732; and Diffusion Tree Sampling's
baselines, Jain et al., arXiv 2506.20701): class accuracy and own-feature FD against NFE for
random search, zero-order search, search over paths, importance resampling and SMC, with the
pinned classifier's log-probability of the intended class as the verifier; and random search
under Ma et al.'s self-supervised verifier, which sees no class.

Protocol: the README's trained ``configs/mnist5k.py`` workdir, sampled *without* guidance (the
conditional model, 1 network call per step, so search has room to help), 15 steps: DPM-Solver++
(2M) for the noise searches, DDPM for importance resampling and SMC (lambda = 1: the target is
p(x | c) p(c | x) as the pinned classifier sees it).  ``--samples`` class-balanced examples per
protocol, scored by the evaluation's own-feature metrics against the 1,000 held-out images.  The
verifier is the classifier that also measures the accuracy (Ma et al.'s "oracle" verifier), so
accuracy measures what the search optimises and FD whether the images stay like the data.
Search over paths: N paths, M noisings per path and round, first solve to step 6, forward 3 and
back 6 steps per round (three rounds).  The self-supervised rows (``random+ss``) pick by the
cosine similarity of the pinned network's features of x0 and of the model's x0-prediction at
sigma/alpha = 2/3 (one more network call per candidate).

  jaxdiff reproduce search_mnist5k --workdir runs/mnist5k    # ~30 min on 2 cores
  jaxdiff reproduce search_mnist5k --quick                   # 4 protocols, 100 samples
"""
from __future__ import annotations

import os
import time

from jaxdiff.reproduce import REPRODUCTIONS, MissingPrerequisite, Paper, Reproduction

PAPER = Paper("Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps",
              "Ma et al.", "arXiv 2501.09732 (2025)")
CLAIM = ("Spending compute on searching the initial noise under a verifier keeps improving "
         "samples past the point where more denoising steps stop helping; searching hard on one "
         "verifier overfits to it (abstract and Sec. 4; ImageNet class-conditional, no MNIST "
         "number).  Diffusion Tree Sampling's baselines, importance resampling and SMC, sample "
         "the reward-tilted target.")
DEFAULT_CONFIG = os.path.join("configs", "mnist5k.py")
DEFAULT_WORKDIR = os.path.join("runs", "mnist5k")
STEPS = 15
MAX_BATCH = 500     # candidates solved in one call
PATHS = dict(start=6, forward=3, backward=6)
METHODS = ("random", "zero_order", "paths", "random+ss", "importance", "smc")


def _protocols(quick: bool) -> list[tuple[str, int, int]]:
    """(method, N, K): N candidates / particles / paths, K zero-order iterations or path
    noisings."""
    if quick:
        return [("random", 1, 0), ("random", 2, 0), ("paths", 1, 2), ("random+ss", 2, 0)]
    return ([("random", n, 0) for n in (1, 2, 4, 8)] + [("zero_order", 2, 1), ("zero_order", 2, 3)]
            + [("paths", 1, 4), ("paths", 2, 2)] + [("random+ss", n, 0) for n in (2, 4)]
            + [("importance", n, 0) for n in (2, 4, 8)] + [("smc", n, 0) for n in (2, 4, 8)])


def add_args(p) -> None:
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="default: %(default)s")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="default: %(default)s")
    p.add_argument("--samples", type=int, default=500, help="examples per protocol")


def _name(method: str, n: int, k: int) -> str:
    return f"{method} N={n}" + (f" K={k}" if method == "zero_order" else
                                f" M={k}" if method == "paths" else "")


def stages(args) -> list[str]:
    return [_name(*p) for p in _protocols(args.quick)]


def check(args) -> None:
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        raise MissingPrerequisite(
            f"no trained model in {args.workdir}; train it first:\n  python3 -m jaxdiff.main "
            f"--config={args.config} --workdir={args.workdir} --mode=train")


def _search_section(method: str, n: int, k: int):
    """(config.search section, sampler) of one protocol: lambda = 1 for the tilted samplers."""
    from jaxdiff.search.config import search_config

    if method == "random":
        return search_config("random", candidates=n), "dpmpp_2m"
    if method == "zero_order":
        return search_config("zero_order", neighbours_per_step=n, iterations=k), "dpmpp_2m"
    if method == "paths":
        return search_config("paths", paths=n, branches=k, **PATHS), "dpmpp_2m"
    if method == "random+ss":
        return search_config("random", candidates=n, verifier="feature_similarity"), "dpmpp_2m"
    if method == "importance":
        return search_config("importance", candidates=n, lam=1.0), "ddpm"
    return search_config("smc", particles=n, lam=1.0), "ddpm"


def _run_protocol(config, den, shape, method: str, n: int, k: int, labels, key):
    """(x0 (S, ...) numpy, nfe per example) of one protocol over all examples, in chunks, by
    the registered search (``jaxdiff.search.config.run_search``) with its verifier."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff.search.config import run_search
    from jaxdiff.search.verifiers import feature_network_verifier

    config = config.copy_and_resolve_references()
    config.search, sampler = _search_section(method, n, k)
    verifier = feature_network_verifier(config, den)
    config.sample.update(dict(sampler=sampler, steps=STEPS, grid="uniform_t"))
    config.sample.options = {}
    chunk = max(1, MAX_BATCH // (n * (k if method == "paths" else 1)))
    out, nfe = [], 0
    for start in range(0, len(labels), chunk):
        y = jnp.asarray(labels[start:start + chunk], jnp.int32)
        r = run_search(config, den, key, (y.shape[0],) + shape, verifier, y,
                       jnp.arange(start, start + y.shape[0]))
        out.append(np.asarray(jax.device_get(r.x0)))
        nfe = r.nfe
    return np.concatenate(out), nfe


def run(args, progress) -> dict:
    check(args)
    import jax
    import numpy as np

    from jaxdiff.config import load_config_file
    from jaxdiff.guidance import guidance_config
    from jaxdiff.images import to_uint8
    from jaxdiff.jobs.evaluate import own_feature_metrics
    from jaxdiff.jobs.spec import restore_model, spec_for_data
    config = load_config_file(args.config)
    config.guidance = guidance_config("none")
    spec, _ = spec_for_data(config)
    params, step = restore_model(spec, args.workdir)
    den = spec.guided(params)
    samples = 100 if args.quick else args.samples
    labels = np.arange(samples) % spec.num_classes
    key = jax.random.key(int(config.sample.seed))
    rows = []
    for method, n, k in _protocols(args.quick):
        with progress.stage(_name(method, n, k)):
            start = time.perf_counter()
            x0, nfe = _run_protocol(config, den, tuple(spec.example_shape), method, n, k,
                                    labels, key)
            seconds = time.perf_counter() - start
            m = own_feature_metrics(config, to_uint8(x0), labels)
            rows.append(dict(method=method, n=n, k=k, nfe=nfe, samples=samples,
                             fd=m["own_features"]["fd"], accuracy=m["class_accuracy"],
                             precision=m["own_features"]["precision"],
                             recall=m["own_features"]["recall"], seconds=seconds))
    return dict(config=args.config, train_steps=step, steps=STEPS, rows=rows)


def ours(result: dict) -> str:
    rows = result["rows"]
    base = next(r for r in rows if r["method"] == "random" and r["n"] == 1)
    parts = [f"plain sampling ({base['nfe']} NFE) accuracy {base['accuracy']:.3f}, FD "
             f"{base['fd']:.2f}"]
    for method in METHODS:
        cands = [r for r in rows if r["method"] == method and r is not base]
        if cands:
            top = max(cands, key=lambda r: r["nfe"])
            parts.append(f"{_name(method, top['n'], top['k'])} ({top['nfe']} NFE) "
                         f"{top['accuracy']:.3f}, FD {top['fd']:.2f}")
    return f"MNIST-5k, no guidance, {result['steps']} steps: " + "; ".join(parts)


def markdown(result: dict) -> str:
    lines = ["Implementation: `jaxdiff/search/` (`docs/search.md`); identities and exact-target "
             "checks: `tests/test_search.py`.", "",
             f"- Model: `{result['config']}` trained for {result['train_steps']} steps, EMA "
             f"parameters, no guidance (1 network call per step), {result['steps']} steps: "
             "DPM-Solver++(2M) for random, zero-order and path search, DDPM for importance "
             f"resampling and SMC (lambda = 1); paths: {PATHS}.",
             "- Verifier and accuracy: the pinned feature network's log p(c | x0) and its "
             "argmax (the same classifier: the searches optimise what the accuracy measures); FD "
             "in its feature space against the 1,000 held-out images; `random+ss`: random "
             "search by the self-supervised verifier (feature similarity, no class).", "",
             "| method | N | K or M | NFE per sample | FD | accuracy | precision | recall | "
             "seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['n']} | {r['k']} | {r['nfe']} | {r['fd']:.3f} | "
                     f"{r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def nfe_axis(ax) -> None:
    """A log NFE axis labelled at 15 x 2^k (the protocols' budgets), without minor labels."""
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.set_xticks([15 * 2 ** k for k in range(5)])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    base = next(r for r in result["rows"] if r["method"] == "random" and r["n"] == 1)
    for method in METHODS:
        rows = sorted((r for r in result["rows"] if r["method"] == method
                       or (r is base and method in ("random", "zero_order", "random+ss"))),
                      key=lambda r: r["nfe"])
        if not rows:
            continue
        a.plot([r["nfe"] for r in rows], [r["accuracy"] for r in rows], "o-", label=method)
        b.plot([r["nfe"] for r in rows], [r["fd"] for r in rows], "o-", label=method)
    for ax, label in ((a, "class accuracy (the verifier's classifier)"),
                      (b, "own-feature FD (pinned)")):
        nfe_axis(ax)
        ax.set_xlabel("NFE per sample")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPRODUCTIONS.register("search_mnist5k", Reproduction(
    paper=PAPER, claim=CLAIM, run=run, ours=ours, markdown=markdown, plot=plot,
    add_args=add_args, check=check, stages=stages,
    needs="a trained configs/mnist5k.py workdir (the README's main job)",
    summary="accuracy / FD against NFE for random, zero-order, path, importance and SMC "
            "search, and the self-supervised verifier"))
