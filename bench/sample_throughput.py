"""Sampling throughput with classifier-free guidance: jaxdiff vs diffusers' scheduler loop.

Same network as bench/train_throughput.py (jaxdiff's default U-Net, freshly initialised; the
diffusers UNet2DModel closest to it), batch 16 of 32x32x3, CFG scale 2 with the conditional and
null branches in one batched network call (batch 32):

  ddim   jaxdiff ``sample(..., sampler='ddim', steps=50)`` (one compiled lax.scan) vs the standard
         diffusers pipeline loop ``for t in DDIMScheduler.timesteps: net(cat([x, x]), t, labels /
         null) -> guidance -> scheduler.step`` (50 NFE)
  heun   jaxdiff ``sampler='heun', steps=18`` (EDM Algorithm 1, 35 NFE) vs the same loop over
         diffusers' HeunDiscreteScheduler with 18 steps (35 NFE)

JAX variants ``default`` and ``2dev`` (two simulated CPU devices, batch sharded over them); the
PyTorch side runs in the venv of --torch-python.  Each variant in its own process, rounds in
alternating order.  The JAX worker also counts compilations (``bench.common.CompileCounter``,
JAX's public compile events): after the first call, calls with a different CFG scale, seed and
labels must compile nothing.  From the repository root:

  python -m bench.sample_throughput                     # measure, write docs/performance.md
  python -m bench.sample_throughput --iters 1 --warmup 1 --rounds 1 --samplers ddim:3,heun:2 --no-write
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from bench import common as C
from bench import train_throughput as TT  # the benchmark models

MODULE = "bench.sample_throughput"

SAMPLER_GRIDS = {"ddim": "uniform_t", "heun": "karras"}
VARIANT_LABELS = {
    "default": "JAX, jaxdiff default",
    "2dev": "JAX, 2 simulated CPU devices",
    "torch": "PyTorch eager, diffusers scheduler loop",
}


def parse_samplers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, steps = item.split(":")
        out.append((name.strip(), int(steps)))
    return out


def jax_worker(args) -> dict:
    import jaxdiff  # noqa: F401  (first: appends its XLA flag before the backend starts)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff import parallel, samplers
    from jaxdiff.guidance import CFG
    from jaxdiff.jobs.spec import build_spec

    compiles = C.CompileCounter()

    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    config, shape, classes = TT.bench_model(args.model, args.num_heads, dtype, args.batch)
    spec = build_spec(config, classes, shape)
    mesh = parallel.make_mesh(config.mesh)
    params = jax.device_put(spec.init_params(), parallel.replicated(mesh))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    den = spec.denoiser(params)
    batch_sharding = parallel.batch_sharding(mesh)
    b = args.batch
    indices = jax.device_put(jnp.arange(b), batch_sharding)
    rng = np.random.default_rng(0)

    def call(name, steps, scale, seed):
        labels = jax.device_put(jnp.asarray(rng.integers(0, classes, (b,)), jnp.int32),
                                batch_sharding)
        guided = CFG(den, scale=scale, null=classes)   # Python float: a traced leaf
        out = samplers.sample(guided, jax.random.key(seed), (b, *shape), sampler=name,
                              steps=steps, grid=SAMPLER_GRIDS[name], cond=labels,
                              indices=indices)
        jax.block_until_ready(out.x0)
        return out

    runs = {}
    for name, steps in parse_samplers(args.samplers):
        before = compiles.count
        t0 = time.perf_counter()
        out = call(name, steps, 2.0, 0)
        first = time.perf_counter() - t0
        after_first = compiles.count
        for s in range(1, args.warmup):
            call(name, steps, 2.0, s)
        times = []
        for s in range(args.iters):          # new seed and new labels every call
            t0 = time.perf_counter()
            call(name, steps, 2.0, 100 + s)
            times.append(time.perf_counter() - t0)
        call(name, steps, 3.5, 999)          # another CFG scale, seed and labels
        after_all = compiles.count
        summ = C.summarize(times)
        runs[name] = dict(sampler=name, steps=steps, nfe=out.nfe, first_s=first,
                          compile_s_est=first - summ["median_s"],
                          compiles_first_call=after_first - before,
                          recompiles_after_first=after_all - after_first,
                          finite=bool(np.isfinite(np.asarray(out.x0)).all()), **summ)
    return dict(side="jax", params=n_params, runs=runs, backend=jax.default_backend(),
                devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
                dtype=dtype, shape=list(shape), xla_flags=os.environ.get("XLA_FLAGS", ""))


def worker_cmd(args, variant: str) -> tuple[list[str], str]:
    """(command, working directory) of one sampling worker of ``variant``."""
    common = ["--iters", str(args.iters), "--warmup", str(args.warmup), "--batch", str(args.batch),
              "--samplers", args.samplers]
    if variant == "torch":
        cmd, cwd = C.torch_worker_cmd(args, "sample")
        return [*cmd, *common], cwd
    cmd, cwd = C.jax_worker_cmd(args, variant, MODULE)
    return [*cmd, *common, "--num-heads", str(args.num_heads), "--model", args.model,
            *(["--dtype", args.dtype] if args.dtype else [])], cwd


def report_calls(args):
    """run_all's progress line for sampling workers: one per sampler."""
    def report(r: int, v: str, res: dict) -> None:
        for name, run in res["runs"].items():
            extra = ("" if v == "torch" else
                     f"  recompiles after first call: {run['recompiles_after_first']}")
            print(f"[sample] round {r + 1} {v:8s} {name}: median {run['median_s']:.3f} s "
                  f"({args.batch / run['median_s']:.2f} images/s), first "
                  f"{run['first_s']:.2f} s{extra}; peak RSS {res['peak_rss_mib']:.0f} MiB; "
                  f"load {res['load_after']:.2f}", flush=True)
    return report


def render(args, results, meta) -> str:
    samplers_ = parse_samplers(args.samplers)
    jax_any = C.first_jax_result(results)
    shape = "x".join(map(str, jax_any["shape"]))
    lines = [
        "## Sampling" + ("" if args.model == "default" else f": `{args.model}` network"),
        "",
        f"Generated by `{meta['command']}` on {meta['date']}.",
        "",
        f"Machine: {meta['cpu_model']}, {meta['cores']} cores; 1-minute load average "
        f"{meta['load_start']:.2f} at the start (after waiting {meta['waited_s']} s"
        f"{', gave up waiting' if meta['gave_up'] else ''}) and {meta['load_end']:.2f} at the "
        f"end.  Versions: jax {meta['jax']}, jaxlib {meta['jaxlib']}, flax {meta['flax']}, "
        f"torch {meta.get('torch', '-')}, diffusers {meta.get('diffusers', '-')}.  JAX backend "
        f"{jax_any['backend']} ({jax_any['device_kind']}).",
        "",
        f"Work: one sampling call for a batch of {args.batch} {shape} images, class-conditional "
        "with CFG scale 2 (conditional and null branch in one batched network call of batch "
        f"{2 * args.batch}), {jax_any['dtype']}, freshly initialised networks"
        f"{'' if args.model == 'default' else f' (the network of the {args.model} config)'}.  "
        "Each variant in its own "
        f"process (both samplers in it), {args.rounds} rounds in alternating order, "
        f"{args.warmup} warm-up call(s) then the median of {args.iters} timed calls, each with a "
        "new seed and new labels.  JAX compile is estimated as first call - median call.  Peak "
        "RSS: the process's `ru_maxrss` (largest over rounds), covering both samplers.  Ratio: "
        "PyTorch s/call / variant s/call.",
        "",
        "| sampler | NFE | variant | s/call per round (median) | images/s | s per NFE | "
        "compile s (est.) | peak RSS MiB | vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, _ in samplers_:
        torch_med = (statistics.median(r["runs"][name]["median_s"] for r in results["torch"])
                     if "torch" in results else None)
        for v, rs in results.items():
            runs = [r["runs"][name] for r in rs]
            med = statistics.median(x["median_s"] for x in runs)
            comp = "-" if v == "torch" else " / ".join(f"{x['compile_s_est']:.1f}" for x in runs)
            ratio = f"{torch_med / med:.2f}x" if torch_med else "-"
            label = C.variant_label(VARIANT_LABELS, args, v)
            if v == "torch":
                label += " (DDIMScheduler)" if name == "ddim" else " (HeunDiscreteScheduler)"
            lines.append(
                f"| {name} {runs[0]['steps']} steps | {runs[0]['nfe']} | {label} | "
                f"{' / '.join('%.2f' % x['median_s'] for x in runs)} | {args.batch / med:.2f} | "
                f"{med / runs[0]['nfe']:.3f} | {comp} | {max(r['peak_rss_mib'] for r in rs):.0f} | {ratio} |")
    lines.append("")
    rec = []
    for v, rs in results.items():
        if v == "torch":
            continue
        for name, _ in samplers_:
            counts = [r["runs"][name]["recompiles_after_first"] for r in rs]
            firsts = [r["runs"][name]["compiles_first_call"] for r in rs]
            rec.append(f"{v}/{name}: first call compiled {max(firsts)}, later calls "
                       f"{'/'.join(map(str, counts))}")
    lines += ["Compile counter (`bench.common.CompileCounter`: XLA backend compilations in the "
              "worker process, from JAX's `/jax/core/compile/backend_compile_duration` events; "
              "the first call's count includes the small helper programs it needs; after the "
              "first call, the timed calls use new seeds and labels and a last call also "
              "changes the CFG scale from 2 to 3.5; 0 means nothing was compiled again): "
              + "; ".join(rec) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-heads", type=int, default=1)
    p.add_argument("--samplers", default="ddim:50,heun:18",
                   help="comma-separated name:steps with name in {ddim, heun}")
    p.add_argument("--variants", default="default,2dev,torch")
    p.add_argument("--model", default="default", choices=TT.MODELS,
                   help="the default U-Net (compared with PyTorch) or a full-scale config's "
                   "network (JAX variants only)")
    p.add_argument("--dtype", default=None, help="compute dtype (default float32 on CPU, "
                   "bfloat16 on GPU)")
    C.add_runner_args(p)
    args = C.parse_runner(p, argv, jax_worker)
    if args is None:
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.model != "default" and "torch" in variants:
        p.error(f"--model {args.model}: there is no matched PyTorch network; pass JAX "
                "--variants only (e.g. --variants default)")
    wait = C.wait_for_load(args.wait_load, args.wait_timeout)
    with C.baseline_checkout(C.REPO, args.baseline) as (args.baseline_path, args.baseline_short):
        results = C.run_all(args, C.with_baseline(variants, args.baseline), worker_cmd,
                            "sample", report_calls(args))
    torch_res = results["torch"][0] if "torch" in results else {}
    meta = C.run_meta(MODULE, argv, wait, torch=torch_res.get("torch", "-"),
                      diffusers=torch_res.get("diffusers", "-"), **C.versions())
    C.publish(render(args, results, meta),
              C.doc_section("sampling", args.model, C.results_backend(results)),
              not args.no_write)


if __name__ == "__main__":
    main()
