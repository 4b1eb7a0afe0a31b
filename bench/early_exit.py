"""DeeDiff early exit: is the saving real wall time?  One forward call of a batch through the
network, against the same network with exit heads and the batched exit rule, when the whole
batch exits after stage k (k = every stage, and "never").

  python -m bench.early_exit [--batch 32] [--iters 5] [--rounds 2] [--no-write]

Networks: the first command's U-Net (configs/mnist5k.py, 32x32x1; its stages are the six decoder
stages, the encoder always runs) and a DiT-S/4 (hidden 384, 12 blocks, 6 heads, patch 4 on
32x32x1; its stages are the blocks), both with ``exit_heads=True``.  The exit is forced by the
uncertainty heads' biases (u ~ 1 before stage k, u ~ 0 at k), so the timing measures the
mechanism (stages skipped by ``lax.cond``, the heads and the uncertainty modules), not a trained
model's exit pattern; which stage a trained model exits at is the reproduction's business
(``jaxdiff reproduce deediff_digits``).  Each variant is jitted once; the rounds alternate the
order of the variants; s/call is the median over rounds of each round's median.  Writes the
table to docs/performance.md, section "Early exit".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

from bench.common import DOC, REPO, publish, run_meta, time_calls, versions

JSON_PATH = os.path.join(REPO, "docs", "early_exit.json")


def _networks():
    from jaxdiff.config import load_config_file
    from jaxdiff.models import default_dit_config

    unet = load_config_file(os.path.join(REPO, "configs", "mnist5k.py")).model
    dit = default_dit_config()
    dit.update(patch_size=4, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0)
    for cfg in (unet, dit):
        cfg.exit_heads = True
    return {"mnist5k U-Net": unet, "DiT-S/4": dit}


def _forced(net, k: int):
    """A copy of ``net`` whose uncertainty heads give u = sigmoid(+-30): ~1 at exits before
    ``k`` and ~0 at exit ``k`` (k >= the number of exits: never exit)."""
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(net)
    state = nnx.to_pure_dict(state)
    for i, head in enumerate(state["uncertainty"].values()):
        head["linear"]["kernel"] = jnp.zeros_like(head["linear"]["kernel"])
        head["linear"]["bias"] = jnp.full_like(head["linear"]["bias"], -30.0 if i == k else 30.0)
    abstract = nnx.split(net)[1]
    nnx.replace_by_pure_dict(abstract, state)
    return nnx.merge(graphdef, abstract)


def measure(args) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxdiff.models import build_model
    from jaxdiff.models import early_exit as E

    rows = {}
    for name, cfg in _networks().items():
        net = build_model(cfg, (32, 32, 1), 10, nnx.Rngs(0))
        n = net.num_stages
        x = jax.random.normal(jax.random.key(1), (args.batch, 32, 32, 1))
        c_noise = jnp.full((args.batch,), 0.5)
        cond = jnp.arange(args.batch, dtype=jnp.int32) % 10
        calls = {"network": jax.jit(lambda x, c, y, net=net: net(x, c, y))}
        stages_run = {"network": n}
        for k in list(range(n - 1)) + [n - 1]:
            forced = _forced(net, k)
            fn = jax.jit(lambda x, c, y, net=forced: E.early_exit(net, x, c, y, 0.5))
            label = f"exit after stage {k}" if k < n - 1 else "exit rule, nobody exits"
            calls[label] = fn
            stages_run[label] = int(fn(x, c_noise, cond)[2])
        per_round = {label: [] for label in calls}
        for r in range(args.rounds):
            order = list(calls) if r % 2 == 0 else list(reversed(calls))
            for label in order:
                fn = calls[label]
                times = time_calls(lambda: jax.block_until_ready(fn(x, c_noise, cond)),
                                   args.iters, warmup=2)
                per_round[label].append(statistics.median(times))
            print(f"{name} round {r + 1}/{args.rounds} done", flush=True)
        base = statistics.median(per_round["network"])
        rows[name] = {label: dict(stages_run=stages_run[label], stages=n,
                                  s_per_call=statistics.median(t), rounds=t,
                                  speedup=base / statistics.median(t))
                      for label, t in per_round.items()}
    return rows


def render(meta: dict, rows: dict) -> str:
    lines = [f"Measured {meta['date']} on {meta['cpu_model']} ({meta['cores']} cores), jax "
             f"{meta['versions']['jax']}: `{meta['command']}`.  One forward call of a batch of "
             f"{meta['batch']} 32x32x1 images, float32; the exit is forced for the whole batch "
             f"(see `bench/early_exit.py`).  Speed-up: the plain network's s/call over the "
             f"variant's.", ""]
    for name, table in rows.items():
        lines += [f"**{name}** ({next(iter(table.values()))['stages']} exitable stages)", "",
                  "| variant | stages run | s/call per round (median) | speed-up |",
                  "|---|---|---|---|"]
        for label, r in table.items():
            rounds = " / ".join(f"{t:.3f}" for t in r["rounds"])
            lines.append(f"| {label} | {r['stages_run']} of {r['stages']} | {rounds} | "
                         f"{r['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    args = p.parse_args(argv)
    rows = measure(args)
    meta = run_meta("bench.early_exit", argv, batch=args.batch, versions=versions())
    publish(render(meta, rows), "early-exit", not args.no_write, doc=DOC)
    if not args.no_write:
        with open(JSON_PATH, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        print(f"wrote {JSON_PATH}")


if __name__ == "__main__":
    main()
