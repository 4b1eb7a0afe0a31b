"""jaxdiff's default U-Net with oneDNN convolutions (XLA FFI) against XLA's own, on the CPU.

The measured answer to "would oneDNN convolutions close the training gap to PyTorch?"
(``docs/performance.md``, section "oneDNN convolutions through FFI").  One JAX worker builds the
benchmark U-Net twice from the same seed: once as jaxdiff runs it (XLA convolutions) and once
with every ``nnx.Conv`` given ``bench/onednn/onednn_jax.py``'s ``conv_general_dilated``
(oneDNN forward, backward-data and backward-weights primitives as FFI custom calls under a
``custom_vjp``).  It then

* checks each distinct convolution of the network against XLA: output, input gradient and
  weight gradient, max |difference| / max |XLA value|;
* times the train step (batch 32, the throughput bench's loss / AdamW / EMA) and one CFG
  forward (batch 32) of both programs alternately in the same process, so machine drift hits
  both alike, and compares the two parameter sets after the same steps on the same batch;
* runs PyTorch's train step (``bench/torch_unet.py train``) in its own process before and
  after the JAX worker.

Needs oneDNN's headers and library (Debian: ``apt-get install libdnnl-dev``) and g++.

  python bench/onednn_conv_ab.py                    # writes docs/performance.md
  python bench/onednn_conv_ab.py --iters 2 --no-write
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import profile_ops as P  # noqa: E402
import torch_unet as T  # noqa: E402
import train_throughput as TT  # noqa: E402

BATCH = 32


def build_program(onednn: bool):
    """(train step, CFG forward, state box, the forward's (denoiser, x, t, cond)) of the
    benchmark U-Net, convolutions by XLA or by oneDNN; the same seed either way."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxdiff import parallel
    from jaxdiff.train import build_setup, compile_train_step, place_state

    init = nnx.Conv.__init__
    if onednn:
        from onednn import onednn_jax

        def conv_init(self, *args, **kwargs):
            kwargs.setdefault("conv_general_dilated", onednn_jax.conv_general_dilated)
            init(self, *args, **kwargs)

        nnx.Conv.__init__ = conv_init
    try:
        config, shape, classes = TT.bench_model("default", 1, "float32", BATCH)
        setup, state = build_setup(config, classes, shape)
    finally:
        nnx.Conv.__init__ = init
    mesh = parallel.make_mesh(config.mesh)
    step_fn, shard = compile_train_step(setup, state, mesh)
    den = setup.denoiser(jax.tree.map(jnp.copy, state["params"]))   # the step donates state
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (BATCH, *shape)).astype(np.float32)
    labels = rng.integers(0, classes, (BATCH,)).astype(np.int32)
    images, labels = parallel.global_batch((images, labels), mesh)
    x = jnp.asarray(rng.normal(size=(BATCH, *shape)), jnp.float32)
    t = jnp.full((BATCH,), 0.5, jnp.float32)
    c = jnp.asarray(rng.integers(0, classes + 1, (BATCH,)), jnp.int32)
    forward = jax.jit(lambda den, x, t, c: den(x, t, c))
    box = {"state": place_state(state, shard)}

    def step():
        box["state"], m = step_fn(box["state"], images, labels)
        jax.block_until_ready(m)

    def fwd():
        forward(den, x, t, c).block_until_ready()

    return step, fwd, box, (den, x, t, c)


def conv_check(den_args) -> list[dict]:
    """Each distinct convolution of the network: oneDNN vs XLA relative errors and oneDNN's
    implementations."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from onednn import onednn_jax

    rng = np.random.default_rng(0)
    rows = []
    den, x, t, c = den_args
    for (b, h, w, cin, cout, k, s), n in P.conv_shapes(lambda x, t, c: den(x, t, c), x, t, c):
        xs = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
        ws = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
        convs = [jax.jit(lambda x, w, conv=conv: conv(
            x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
            for conv in (lax.conv_general_dilated, onednn_jax.conv_general_dilated)]
        dy = jnp.asarray(rng.normal(size=jax.eval_shape(convs[0], xs, ws).shape), jnp.float32)
        outs = []
        for f in convs:
            y, pullback = jax.vjp(f, xs, ws)
            outs.append((y, *pullback(dy)))
        errs = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in zip(*outs)]
        lo, hi = onednn_jax.same_padding(h, k, s)
        rows.append(dict(shape=[b, h, w, cin, cout, k, s], count=n, rel_err=errs,
                         impl=onednn_jax.implementations((b, h, w, cin, cout, k), s, lo, hi)))
    return rows


def jax_worker(args) -> dict:
    import jaxdiff  # noqa: F401  (first: appends its XLA flag before the backend starts)
    import jax
    import jax.numpy as jnp

    programs = {"xla": build_program(False), "onednn": build_program(True)}
    checks = conv_check(programs["xla"][3])
    for step, fwd, _, _ in programs.values():
        for _ in range(args.warmup):
            step()
            fwd()
    times = {name: {"step": [], "fwd": []} for name in programs}
    for i in range(args.iters):
        for name in (("xla", "onednn") if i % 2 == 0 else ("onednn", "xla")):
            step, fwd, _, _ = programs[name]
            times[name]["step"] += T.time_calls(step, 1)
            times[name]["fwd"] += T.time_calls(fwd, 1)
    ref, new = (jax.tree.leaves(programs[k][2]["state"]["params"]) for k in ("xla", "onednn"))
    param_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ref, new))
    param_max = max(float(jnp.max(jnp.abs(a))) for a in ref)
    return dict(side="jax", times=times, checks=checks, param_rel_diff=param_diff / param_max,
                steps=args.warmup + args.iters, **TT.versions())


def render(args, jx: dict, torch_runs: list[dict], meta: dict) -> str:
    med = {name: {kind: statistics.median(v) for kind, v in d.items()}
           for name, d in jx["times"].items()}
    torch_step = statistics.median([r["median_s"] for r in torch_runs])
    tv = torch_runs[0]
    rows = ["| convolutions | train step s (median) | images/s | vs PyTorch | "
            "CFG forward s (median) |", "|---|---|---|---|---|"]
    for name, label in (("xla", "XLA (jaxdiff default)"),
                        ("onednn", "oneDNN 2.6 through FFI")):
        rows.append(f"| {label} | {med[name]['step']:.3f} | {BATCH / med[name]['step']:.1f} | "
                    f"{torch_step / med[name]['step']:.2f}x | {med[name]['fwd']:.3f} |")
    rows.append(f"| PyTorch {tv['torch']} eager, diffusers UNet2DModel (oneDNN) | "
                f"{torch_step:.3f} | {BATCH / torch_step:.1f} | 1.00x | - |")
    check_rows = ["| conv (B, H, W, Cin -> Cout, k, stride) | in network | output | input grad | "
                  "weight grad | oneDNN implementation (fwd / bwd data / bwd weights) |",
                  "|---|---|---|---|---|---|"]
    for r in jx["checks"]:
        s = r["shape"]
        e = r["rel_err"]
        check_rows.append(f"| {s[0]}, {s[1]}, {s[2]}, {s[3]} -> {s[4]}, {s[5]}x{s[5]}, {s[6]} "
                          f"| {r['count']} | {e[0]:.1e} | {e[1]:.1e} | {e[2]:.1e} | "
                          f"{' / '.join(r['impl'])} |")
    step_gain = med["xla"]["step"] / med["onednn"]["step"]
    fwd_gain = med["xla"]["fwd"] / med["onednn"]["fwd"]
    return "\n".join([
        "## oneDNN convolutions through FFI", "",
        f"Generated by `{meta['command']}` on {meta['date']}.", "",
        f"Machine: {meta['cpu_model']}, {meta['cores']} cores; 1-minute load average "
        f"{meta['load_start']:.2f} at the start and {meta['load_end']:.2f} at the end.  "
        f"Versions: jax {jx['jax']}, jaxlib {jx['jaxlib']}, flax {jx['flax']}, oneDNN 2.6 "
        f"(Debian libdnnl-dev, OpenMP), torch {tv['torch']}, diffusers {tv['diffusers']}.", "",
        "jaxdiff's benchmark U-Net (the network of the Training table), float32, batch "
        f"{BATCH}, built twice from one seed in one process: with XLA's convolutions and with "
        "every convolution as oneDNN primitives called through XLA FFI "
        "(`bench/onednn/`: forward, backward-data and backward-weights under a `custom_vjp`, "
        "NHWC / HWIO used in place, one primitive at a time).  "
        f"{args.warmup} warm-up then {args.iters} alternating timed calls of each program; "
        "PyTorch's train step in its own process before and after (median of its two "
        "medians).", "",
        *rows, "",
        f"oneDNN convolutions make the train step {step_gain:.2f}x and the forward "
        f"{fwd_gain:.2f}x as fast as with XLA's.  After the same {jx['steps']} steps on the "
        f"same batch the two parameter sets differ by {jx['param_rel_diff']:.1e} of the "
        "largest parameter (float32 summation order).", "",
        "Each distinct convolution against XLA (max |difference| / max |XLA value|, random "
        "input, weights and output gradient):", "",
        *check_rows, "",
    ])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=10, help="timed calls of each program")
    p.add_argument("--warmup", type=int, default=2)
    T.add_runner_args(p)
    args = T.parse_runner(p, argv, jax_worker)
    if args is None:
        return
    wait = T.wait_for_load(args.wait_load, args.wait_timeout)
    torch_cmd = [T.torch_python(args.torch_python), os.path.join(TT.REPO, "bench", "torch_unet.py"),
                 "train", "--iters", "5", "--warmup", "2"]
    torch_runs = [T.run_worker(torch_cmd, label="torch train")]
    jx = T.run_worker([sys.executable, os.path.abspath(__file__), "--worker", "--iters",
                       str(args.iters), "--warmup", str(args.warmup)],
                      env=TT.variant_env("default"), label="jax xla/onednn")
    torch_runs.append(T.run_worker(torch_cmd, label="torch train"))
    meta = T.run_meta(__file__, argv, wait)
    T.publish(render(args, jx, torch_runs, meta), TT.DOC, "onednn-conv", TT.DOC_HEADER,
              not args.no_write)


if __name__ == "__main__":
    main()
