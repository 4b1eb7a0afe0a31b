"""Where the CPU time of jaxdiff's default U-Net goes, and how its convolutions compare with PyTorch.

Part 1, XLA op profile (JAX worker): a ``jax.profiler`` trace of the compiled train step (batch
32, the benchmark's loss / AdamW / EMA) and of the forward at the CFG network batch (32), read
back with ``jax.profiler.ProfileData``.  Op events on XLA's CPU threads are grouped by kind (the
HLO name without its number) and summed over threads: core-milliseconds per call.  XLA's CPU
convolution thunks hand their work to Eigen's asynchronous tensor contraction, whose time is
not attributed to op events; the table reports it as "not attributed" = busy core time of the
traced calls (``getrusage``) minus the attributed time, i.e. the convolutions plus runtime
overhead.  The train step's attributed time is also split by phase (forward, backward, update)
from each HLO op's JAX source path in the compiled program's metadata.

Part 2, convolution kernels: every distinct convolution of the forward at batch 32 (shapes read
from the jaxpr), timed alone: XLA's convolution + bias (jaxdiff's CPU flags) against
``torch.nn.functional.conv2d`` with bias in NCHW and channels_last, and summed with each shape's
multiplicity into the forward's convolution time; then the same for forward + backward, summed
into a train step's convolution time: the ceiling of what oneDNN convolutions could save.  The
JAX and PyTorch convolution workers run ``--rounds`` times in alternating order; each side keeps
its faster round per shape.

  python bench/profile_ops.py              # writes docs/performance.md, section "profile"
  python bench/profile_ops.py --no-write --calls 1 --rounds 1
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_unet as T  # noqa: E402
import train_throughput as TT  # noqa: E402

TOP = 10  # op kinds listed per table; the rest are summed as "other"


def _busy_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


PHASES = ("forward", "backward", "update (clip, AdamW, EMA, noise draws)",
          "no source (ops XLA created: layout copies, convolutions and their rewrites as dots)")


def hlo_sources(compiled_text: str) -> dict[str, str]:
    """HLO instruction name -> its ``op_name`` metadata (the JAX source path), from the text of
    a compiled program."""
    found = re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"',
                       compiled_text, flags=re.M)
    return dict(found)


def phase_of(op_name: str | None) -> str:
    """Train-step phase of an HLO op from its JAX source path: autodiff's transpose is the
    backward, its jvp the forward; the rest is the update."""
    if op_name is None:
        return PHASES[3]
    if "transpose(jvp" in op_name:
        return PHASES[1]
    return PHASES[0] if "jvp(" in op_name else PHASES[2]


def profile_calls(fn, calls: int, sources: dict[str, str] | None = None) -> dict:
    """Traces ``calls`` calls of ``fn`` (already compiled); returns per-call core-ms by op kind
    (and, given ``sources`` from ``hlo_sources``, by train-step phase), busy core-seconds and
    wall seconds per call."""
    import jax

    with tempfile.TemporaryDirectory() as d:
        busy0, wall0 = _busy_s(), time.perf_counter()
        with jax.profiler.trace(d):
            for _ in range(calls):
                fn()
        busy, wall = _busy_s() - busy0, time.perf_counter() - wall0
        pb = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(pb)
    kinds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    phases: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:      # XLA's CPU compute threads
                continue
            for ev in line.events:
                if ev.name.startswith(("ThunkExecutor", "end:", "SlinkyThreadPool")):
                    continue
                kind = re.sub(r"\.\d+$", "", ev.name)
                kinds[kind] += ev.duration_ns
                counts[kind] += 1
                if sources is not None:
                    phases[phase_of(sources.get(ev.name))] += ev.duration_ns
    return dict(core_ms={k: v / 1e6 / calls for k, v in kinds.items()},
                ops={k: v / calls for k, v in counts.items()},
                phase_core_ms={k: v / 1e6 / calls for k, v in phases.items()},
                busy_core_s=busy / calls, wall_s=wall / calls)


def conv_shapes(fn, *args) -> list[tuple[list[int], int]]:
    """Distinct convolutions in ``jax.make_jaxpr(fn)(*args)`` as ([B, H, W, Cin, Cout, k,
    stride], count); NHWC / HWIO, square kernels and strides, 'SAME' padding."""
    import jax

    found: collections.Counter = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                b, h, w, cin = eqn.invars[0].aval.shape
                k, _, _, cout = eqn.invars[1].aval.shape
                found[(b, h, w, cin, cout, k, eqn.params["window_strides"][0])] += 1
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return [(list(s), n) for s, n in sorted(found.items())]


def jax_worker(args) -> dict:
    """``--part profile``: the op profiles and the network's convolution shapes;
    ``--part convs``: the timing of the convolutions in ``--shapes``."""
    import jaxdiff  # noqa: F401  (first: appends its XLA flag before the backend starts)

    return (profile_worker if args.part == "profile" else conv_worker)(args)


def profile_worker(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff import parallel
    from jaxdiff.train import build_setup, compile_train_step, place_state

    config, shape, classes = TT.bench_model("default", 1, "float32", args.batch)
    setup, state = build_setup(config, classes, shape)
    b = args.batch
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, *shape)), jnp.float32)
    t = jnp.asarray(rng.uniform(size=(b,)), jnp.float32)
    c = jnp.asarray(rng.integers(0, classes + 1, (b,)), jnp.int32)

    forward = jax.jit(lambda den, x, t, c: den(x, t, c))
    den = setup.denoiser(state["params"])
    convs = conv_shapes(lambda x, t, c: den(x, t, c), x, t, c)

    def fwd():
        forward(den, x, t, c).block_until_ready()

    mesh = parallel.make_mesh(config.mesh)
    step_fn, shard = compile_train_step(setup, state, mesh)
    box = {"state": place_state(state, shard)}
    images = rng.uniform(-1, 1, (b, *shape)).astype(np.float32)
    labels = rng.integers(0, classes, (b,)).astype(np.int32)
    images, labels = parallel.global_batch((images, labels), mesh)

    def train():
        box["state"], m = step_fn(box["state"], images, labels)
        jax.block_until_ready(m)

    sources = hlo_sources(step_fn.lower(box["state"], images, labels).compile().as_text())
    out = {}
    for name, fn, src in (("forward", fwd, None), ("train_step", train, sources)):
        times = T.time_calls(fn, args.calls, warmup=2)
        prof = profile_calls(fn, args.calls, src)
        prof["untraced_wall_s"] = statistics.median(times)
        out[name] = prof
    return dict(side="jax", profile=out, conv_shapes=convs,
                xla_flags=os.environ.get("XLA_FLAGS", ""), **TT.versions())


def conv_worker(args) -> dict:
    """Per shape of ``args.shapes``: the forward (``jax_s``) and the forward + all-ones backward
    to input, weight and bias (``jax_train_s``), XLA convolution + bias under jit."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    rng = np.random.default_rng(0)
    rows = []
    for bb, h, w, cin, cout, k, stride in json.loads(args.shapes):
        xs = jnp.asarray(rng.normal(size=(bb, h, w, cin)), jnp.float32)
        ws = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
        bs = jnp.asarray(rng.normal(size=(cout,)), jnp.float32)
        conv = jax.jit(lambda x, w, bias, s=stride: lax.conv_general_dilated(
            x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias)

        @jax.jit
        def train(x, w, bias, conv=conv):   # forward + all-ones backward, as the torch side
            y, pullback = jax.vjp(conv, x, w, bias)
            return y, pullback(jnp.ones_like(y))

        times = T.time_calls(lambda: conv(xs, ws, bs).block_until_ready(), args.conv_iters,
                             warmup=2)
        train_times = T.time_calls(lambda: jax.block_until_ready(train(xs, ws, bs)),
                                   args.conv_iters, warmup=2)
        rows.append(dict(jax_s=statistics.median(times),
                         jax_train_s=statistics.median(train_times)))
    return dict(side="jax", convs=rows)


def fastest_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per shape and timing key, the smallest of the rounds' medians."""
    return [{key: min(r[i][key] for r in rounds) for key in rounds[0][i]}
            for i in range(len(rounds[0]))]


def conv_flops(shape) -> float:
    b, h, w, cin, cout, k, stride = shape
    return 2.0 * b * (h // stride) * (w // stride) * k * k * cin * cout


def op_table(prof: dict) -> list[str]:
    core = prof["core_ms"]
    attributed = sum(core.values())
    busy_ms = 1e3 * prof["busy_core_s"]
    top = sorted(core.items(), key=lambda kv: -kv[1])[:TOP]
    rows = ["| op kind (XLA HLO name) | ops per call | core-ms per call | share of busy time |",
            "|---|---|---|---|"]
    for kind, ms in top:
        rows.append(f"| `{kind}` | {prof['ops'][kind]:.0f} | {ms:.1f} | "
                    f"{100 * ms / busy_ms:.1f}% |")
    other = attributed - sum(ms for _, ms in top)
    rows.append(f"| other op kinds | - | {other:.1f} | {100 * other / busy_ms:.1f}% |")
    rest = busy_ms - attributed
    rows.append(f"| not attributed (Eigen convolution work, runtime) | - | {rest:.1f} | "
                f"{100 * rest / busy_ms:.1f}% |")
    rows.append(f"| **busy core time** | - | {busy_ms:.1f} | 100% |")
    return rows


def phase_table(prof: dict) -> list[str]:
    """The attributed op time of a train step by phase (the HLO ops' JAX source paths)."""
    core = prof["phase_core_ms"]
    total = sum(core.values())
    rows = ["The same attributed op time by phase, from each HLO op's JAX source path "
            "(`jvp` = forward, `transpose(jvp)` = backward); the not-attributed convolution work "
            "is not in it:", "",
            "| phase | core-ms per call | share of attributed op time |", "|---|---|---|"]
    for phase in PHASES:
        ms = core.get(phase, 0.0)
        rows.append(f"| {phase} | {ms:.1f} | {100 * ms / total:.1f}% |")
    return rows


def render(args, jx: dict, tc: dict, meta: dict) -> str:
    lines = [
        "## Where the time goes (profile)", "",
        f"Generated by `{meta['command']}` on {meta['date']}.", "",
        f"Machine: {meta['cpu_model']}, {meta['cores']} cores; 1-minute load average "
        f"{meta['load_start']:.2f} at the start and {meta['load_end']:.2f} at the end.  Versions: "
        f"jax {jx['jax']}, jaxlib {jx['jaxlib']}, flax {jx['flax']}, torch {tc['torch']} "
        f"(threads: {tc['torch_threads']}).  XLA_FLAGS: `{jx['xla_flags']}`.", "",
        "XLA op profile of jaxdiff's default U-Net (the network of the tables above), float32, "
        f"batch {args.batch}: {args.calls} traced calls each, core-milliseconds per call summed "
        "over XLA's CPU threads.  XLA's CPU convolutions run as Eigen asynchronous contractions "
        "whose work is not attributed to op events: it is in the \"not attributed\" row (busy "
        "core time from `getrusage` minus attributed op time).", "",
    ]
    for name, title in (("train_step", "Train step (forward, backward, AdamW, EMA)"),
                        ("forward", "Forward (one sampler network evaluation at the CFG batch)")):
        p = jx["profile"][name]
        lines += [f"{title}: {p['untraced_wall_s']:.3f} s wall untraced, {p['wall_s']:.3f} s "
                  f"traced, {p['busy_core_s'] / p['wall_s']:.2f} cores busy while traced.", "",
                  *op_table(p), ""]
        if p["phase_core_ms"]:
            lines += [*phase_table(p), ""]
    rows = ["| conv (B, H, W, Cin -> Cout, k, stride) | in forward | GFLOP | jaxdiff (XLA) ms "
            "| PyTorch NCHW ms | PyTorch channels_last ms | XLA GFLOP/s | best PyTorch GFLOP/s |",
            "|---|---|---|---|---|---|---|---|"]
    train_rows = ["| conv (B, H, W, Cin -> Cout, k, stride) | in network | jaxdiff (XLA) ms "
                  "| PyTorch NCHW ms | PyTorch channels_last ms | XLA / best PyTorch |",
                  "|---|---|---|---|---|---|"]
    tot = collections.Counter()
    for (s, n), row, trow in zip(jx["conv_shapes"], jx["convs"], tc["convs"]):
        gf = conv_flops(s) / 1e9
        best = min(trow["nchw"], trow["channels_last"])
        tot["jax"] += n * row["jax_s"]
        tot["nchw"] += n * trow["nchw"]
        tot["cl"] += n * trow["channels_last"]
        tot["best"] += n * best
        rows.append(f"| {s[0]}, {s[1]}, {s[2]}, {s[3]} -> {s[4]}, {s[5]}x{s[5]}, {s[6]} | {n} | "
                    f"{gf:.2f} | {1e3 * row['jax_s']:.1f} | {1e3 * trow['nchw']:.1f} | "
                    f"{1e3 * trow['channels_last']:.1f} | {gf / row['jax_s']:.0f} | "
                    f"{gf / best:.0f} |")
        best = min(trow["nchw_train"], trow["channels_last_train"])
        tot["jax_train"] += n * row["jax_train_s"]
        tot["best_train"] += n * best
        train_rows.append(f"| {s[0]}, {s[1]}, {s[2]}, {s[3]} -> {s[4]}, {s[5]}x{s[5]}, {s[6]} | "
                          f"{n} | {1e3 * row['jax_train_s']:.1f} | "
                          f"{1e3 * trow['nchw_train']:.1f} | "
                          f"{1e3 * trow['channels_last_train']:.1f} | "
                          f"{row['jax_train_s'] / best:.2f} |")
    fwd = jx["profile"]["forward"]["untraced_wall_s"]
    step = jx["profile"]["train_step"]["untraced_wall_s"]
    saved = tot["jax_train"] - tot["best_train"]
    lines += [
        "Convolution kernels: each distinct convolution of that forward timed alone (median of "
        f"{args.conv_iters}, bias included), XLA with jaxdiff's flags vs `torch.nn.functional."
        f"conv2d` (oneDNN), same run: {args.rounds} rounds of a JAX and a PyTorch worker in "
        "alternating order, the faster round's median per shape and side:", "", *rows, "",
        f"Summed with multiplicity, one forward's convolutions take {tot['jax']:.3f} s in XLA "
        f"against {tot['nchw']:.3f} s (NCHW) / {tot['cl']:.3f} s (channels_last) / "
        f"{tot['best']:.3f} s (best per shape) in PyTorch; the whole jaxdiff forward took "
        f"{fwd:.3f} s, so convolutions are {100 * tot['jax'] / fwd:.0f}% of it.", "",
        "The same convolutions in training: forward plus the backward to input, weight and bias "
        "for an all-ones output gradient (`jax.vjp` under one jit; `torch.autograd.grad`), "
        "timed the same way:", "", *train_rows, "",
        f"Summed with multiplicity: {tot['jax_train']:.3f} s per train step in XLA against "
        f"{tot['best_train']:.3f} s with PyTorch's oneDNN kernels (best layout per shape).  "
        f"That difference, {saved:.3f} s, is what routing every convolution to oneDNN (a "
        f"oneDNN-enabled jaxlib or an FFI custom call) could save per step at most from the "
        f"kernels alone: {step:.3f} -> {step - saved:.3f} s for the train step timed above.  "
        "(The first convolution needs no input gradient in the train step; timed with one "
        "here on both sides.)", "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calls", type=int, default=3, help="traced (and untraced) calls per program")
    p.add_argument("--conv-iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2,
                   help="convolution timing rounds (JAX and PyTorch workers alternating)")
    p.add_argument("--part", choices=("profile", "convs"), default="profile",
                   help="worker mode: which part to run")
    p.add_argument("--shapes", default="[]", help="worker --part convs: JSON list of "
                   "[B, H, W, Cin, Cout, k, stride]")
    T.add_runner_args(p)
    args = T.parse_runner(p, argv, jax_worker)
    if args is None:
        return
    wait = T.wait_for_load(args.wait_load, args.wait_timeout)
    here = [sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(args.batch)]
    jx = T.run_worker(here + ["--part", "profile", "--calls", str(args.calls)],
                      env=TT.variant_env("default"), label="profile")
    shapes = json.dumps([s for s, _ in jx["conv_shapes"]])
    jax_cmd = here + ["--part", "convs", "--conv-iters", str(args.conv_iters), "--shapes", shapes]
    torch_cmd = [T.torch_python(args.torch_python), os.path.join(TT.REPO, "bench", "torch_unet.py"),
                 "conv", "--iters", str(args.conv_iters), "--warmup", "2", "--shapes", shapes]
    runs = {"jax": [], "torch": []}
    for r in range(args.rounds):        # alternating order, so drift hits both sides alike
        for side in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
            runs[side].append(
                T.run_worker(jax_cmd, env=TT.variant_env("default"), label=f"convs {r}")
                if side == "jax" else T.run_worker(torch_cmd, label=f"torch convs {r}"))
    jx["convs"] = fastest_rounds([run["convs"] for run in runs["jax"]])
    tc = dict(runs["torch"][0], convs=fastest_rounds([run["convs"] for run in runs["torch"]]))
    meta = T.run_meta(__file__, argv, wait)
    T.publish(render(args, jx, tc, meta), TT.DOC, "profile", TT.DOC_HEADER, not args.no_write)


if __name__ == "__main__":
    main()
