"""Search throughput: network evaluations per second of sequential Monte Carlo and Diffusion Tree
Sampling against plain batched sampling at the same network batch size.

The first command's U-Net (configs/mnist5k.py, 32x32x1, freshly initialised: speed does not
depend on the weights), DDPM steps (eta = 1) on the uniform-t grid, float32, and a reward the
searches call on every x0-prediction (SMC) or leaf (DTS): a fixed random linear map of the image
(cheap next to the U-Net, so the table measures the search machinery, not a classifier).  At
network batch B:

  plain     ``samplers.sample`` of B samples (one compiled lax.scan): B x steps NFE per call
  smc       ``search.smc`` of B / N examples with N particles each (every step one network
            call on B states, resampling in the same scan)
  dts       ``search.dts`` of B trees (every rollout one batched, jitted step per grid point;
            tree selection and backup on the host), R rollouts per tree, branching every
            steps / 5 points (the default, the paper's)

NFE/s counts the denoiser evaluations each method reports (for DTS the steps its rollouts ran,
exactly) over the wall time of the call; the ratio to plain sampling is the fraction of the
batched sampler's throughput the search keeps.  Each method is run once to compile, then timed;
rounds alternate the order.

  python -m bench.search_throughput [--batch 32] [--steps 20] [--rounds 2] [--no-write]
"""
from __future__ import annotations

import argparse
import statistics
import time

from bench.common import DOC, REPO, publish, run_meta, versions


def _setup(batch: int):
    import os

    import jax

    from jaxdiff.config import load_config_file
    from jaxdiff.jobs.spec import build_spec

    config = load_config_file(os.path.join(REPO, "configs", "mnist5k.py"))
    spec = build_spec(config, 10, (32, 32, 1))
    den = spec.denoiser(spec.init_params())
    w = jax.random.normal(jax.random.key(7), (32 * 32,)) / 32.0

    def reward(x0, cond):
        del cond
        return x0.reshape(x0.shape[0], -1) @ w

    labels = jax.numpy.arange(batch, dtype=jax.numpy.int32) % 10
    return den, reward, labels


def measure(args) -> dict:
    import jax

    from jaxdiff import samplers
    from jaxdiff.search import dts, smc

    den, reward, labels = _setup(args.batch)
    b, n, steps = args.batch, args.particles, args.steps
    shape = (b, 32, 32, 1)

    def plain(seed):
        out = samplers.sample(den, jax.random.key(seed), shape, sampler="ddpm", steps=steps,
                              grid="uniform_t", cond=labels)
        jax.block_until_ready(out.x0)
        return b * out.nfe

    def run_smc(seed):
        res = smc(den, jax.random.key(seed), (b // n,) + shape[1:], reward, lam=1.0,
                  particles=n, steps=steps, cond=labels[: b // n])
        jax.block_until_ready(res.x0)
        return (b // n) * res.nfe

    def run_dts(seed):
        res = dts(den, jax.random.key(seed), shape, reward, lam=1.0, rollouts=args.rollouts,
                  steps=steps, cond=labels)
        jax.block_until_ready(res.x0)
        return b * res.nfe

    methods = {"plain DDPM": plain, f"SMC, {n} particles": run_smc,
               f"DTS, {args.rollouts} rollouts": run_dts}
    for fn in methods.values():
        fn(0)                                                   # compile
    per_round = {name: [] for name in methods}
    for r in range(args.rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in order:
            rates = []
            for i in range(args.iters):
                t0 = time.perf_counter()
                nfe = methods[name](100 * r + i + 1)
                rates.append(nfe / (time.perf_counter() - t0))
            per_round[name].append(statistics.median(rates))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    base = statistics.median(per_round["plain DDPM"])
    return {name: dict(nfe_per_s=statistics.median(v), rounds=v,
                       fraction=statistics.median(v) / base)
            for name, v in per_round.items()}


def render(meta: dict, rows: dict) -> str:
    lines = [f"Measured {meta['date']} on {meta['cpu_model']} ({meta['cores']} cores), jax "
             f"{meta['versions']['jax']}: `{meta['command']}`.  Network batch {meta['batch']} "
             f"of 32x32x1 (the first command's U-Net, float32), DDPM {meta['steps']} steps; "
             "see `bench/search_throughput.py`.  Fraction: the method's NFE/s over plain "
             "sampling's (the goal: at least 0.8).", "",
             "| method | NFE/s per round (median) | NFE/s | fraction of plain |",
             "|---|---|---:|---:|"]
    for name, r in rows.items():
        rounds = " / ".join(f"{v:.0f}" for v in r["rounds"])
        lines.append(f"| {name} | {rounds} | {r['nfe_per_s']:.0f} | {r['fraction']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    args = p.parse_args(argv)
    if args.batch % args.particles:
        p.error("--batch must be a multiple of --particles")
    rows = measure(args)
    meta = run_meta("bench.search_throughput", argv, batch=args.batch, steps=args.steps,
                    versions=versions())
    publish(render(meta, rows), "search-throughput", not args.no_write, doc=DOC)


if __name__ == "__main__":
    main()
