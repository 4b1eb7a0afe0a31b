"""What the training loop costs on top of the compiled train step (is multi-step jit worth it?).

For each config (embedded data, so no download), in this process and on the default backend:

  loop      ``jaxdiff.train.train`` itself, as users run it (host batch, device transfer,
            dispatch, its logging and checkpoint policy): steady-state s/step from the wall
            time between the first timed step call and the final state being ready;
  compiled  the same compiled step called back to back on one batch already on the device: the
            most that fusing several steps into one jit call (``lax.scan`` over steps) could
            reach, since such a call still runs every step's computation;
  host      the loop's host work per step alone: ``load_batch`` + ``parallel.global_batch``.

loop / compiled - 1 is the overhead multi-step jit could remove at best.

  python bench/train_loop_overhead.py                      # writes docs/performance.md
  python bench/train_loop_overhead.py --steps 12 --no-write   # smoke test
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_unet as T  # noqa: E402
import train_throughput as TT  # noqa: E402

import jax  # noqa: E402

from jaxdiff import parallel, train  # noqa: E402
from jaxdiff.config import load_config_file  # noqa: E402
from jaxdiff.data import get_source  # noqa: E402
from jaxdiff.data.pipeline import load_batch  # noqa: E402
from jaxdiff.data.sampler import BatchSampler  # noqa: E402

CONFIGS = ("digits", "mnist5k")


def config_for(name: str, steps: int):
    """configs/NAME.py for ``steps`` steps: its own logging interval, no periodic checkpoint or
    preview grid (``train.train`` still writes both once, after the last step)."""
    return load_config_file(os.path.join(TT.REPO, "configs", f"{name}.py"),
                            {"train.num_steps": steps, "train.checkpoint_every": 0,
                             "train.sample_every": 0, "train.progress_bar": False,
                             "train.time_limit_minutes": 0.0})


def time_loop(config, skip: int) -> float:
    """Steady-state s/step of ``train.train``: wall time from step ``skip``'s call to the last
    step's state being ready, taken by wrapping the compiled step.  The wrapper blocks twice:
    before step ``skip`` (dispatch is asynchronous, so without it the window would include
    steps queued earlier) and on the last step's state."""
    entries, done = [], {}
    num_steps = int(config.train.num_steps)
    compile_train_step = train.compile_train_step

    def observed(setup, state, mesh):
        step_fn, shard = compile_train_step(setup, state, mesh)

        def step(state, images, labels):
            if len(entries) == skip:  # the host runs ahead: drain the queue before timing
                jax.block_until_ready(state)
            entries.append(time.perf_counter())
            out = step_fn(state, images, labels)
            if len(entries) == num_steps:
                jax.block_until_ready(out)
                done["t"] = time.perf_counter()
            return out

        return step, shard

    train.compile_train_step = observed
    try:
        with tempfile.TemporaryDirectory() as workdir:
            train.train(config, workdir)
    finally:
        train.compile_train_step = compile_train_step
    return (done["t"] - entries[skip]) / (num_steps - skip)


def time_compiled_and_host(config, skip: int) -> tuple[float, float]:
    """(s/step of the compiled step on one device batch, s of host batch work per step)."""
    mesh = parallel.make_mesh(config.mesh)
    source = get_source(config.data, "train")
    setup, state = train.build_setup(config, source.num_classes, source.image_shape)
    step_fn, shard = train.compile_train_step(setup, state, mesh)
    state = train.place_state(state, shard)
    sampler = BatchSampler(num_examples=len(source),
                           global_batch_size=int(config.train.batch_size), seed=0,
                           process_index=jax.process_index(), process_count=jax.process_count())
    flip = bool(config.data.random_flip)

    def host(step):
        return parallel.global_batch(load_batch(source, sampler, step, flip), mesh)

    batch = host(0)
    n = int(config.train.num_steps)
    for _ in range(skip):
        state, metrics = step_fn(state, *batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(n - skip):
        state, metrics = step_fn(state, *batch)
    jax.block_until_ready(state)
    compiled = (time.perf_counter() - t0) / (n - skip)
    host_times = T.time_calls(lambda: jax.block_until_ready(host(1)), iters=20, warmup=2)
    return compiled, statistics.median(host_times)


def render(rows: list[dict], meta: dict) -> str:
    dev = jax.devices()[0]
    lines = ["## Training loop overhead", "",
             f"Generated by `{meta['command']}` on {meta['date']}.", "",
             f"Machine: {meta['cpu_model']}, {meta['cores']} cores; backend "
             f"{jax.default_backend()} ({dev.device_kind}, {jax.device_count()} device(s)).  "
             f"Versions: jax {jax.__version__}.", "",
             "`loop`: `jaxdiff.train.train` as the main job runs it (host batch, transfer, "
             "dispatch, its logging at the config's `log_every`; its checkpoint and preview "
             "grid come after the timed steps), steady state after the first "
             f"{meta['skip']} steps.  `compiled`: the same compiled step back to back on one "
             "device batch: the floor that several steps per jit call could reach.  `host`: "
             "the loop's batch work alone (`load_batch` + `parallel.global_batch`, median of "
             f"20).  {meta['rounds']} rounds in alternating order, in one process.  Dispatch is "
             "asynchronous, so host work overlaps the previous step's computation.", "",
             "| config | batch | steps timed | loop ms/step per round | compiled ms/step per "
             "round | host ms/step | loop / compiled - 1 (medians) |",
             "|---|---|---|---|---|---|---|"]
    def per_round(seconds):
        return " / ".join(f"{1e3 * x:.1f}" for x in seconds)

    for r in rows:
        lines.append(f"| {r['config']} | {r['batch']} | {r['timed']} | {per_round(r['loops'])} | "
                     f"{per_round(r['compileds'])} | {1e3 * r['host']:.2f} | "
                     f"{100 * (r['loop'] / r['compiled'] - 1):+.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--steps", type=int, default=0,
                   help="steps per measurement (0: 200 for digits, 60 for mnist5k)")
    p.add_argument("--skip", type=int, default=5, help="first steps not timed (compile)")
    p.add_argument("--rounds", type=int, default=2,
                   help="loop / compiled measurements per config, in alternating order")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        steps = args.steps or {"digits": 200, "mnist5k": 60}.get(name, 60)
        if steps <= args.skip + 1:
            p.error(f"--steps {steps}: need more than --skip + 1 = {args.skip + 1}")
        config = config_for(name, steps)
        loops, compileds, hosts = [], [], []
        for r in range(args.rounds):  # alternating order: this machine's speed drifts
            for which in (("loop", "compiled") if r % 2 == 0 else ("compiled", "loop")):
                if which == "loop":
                    loops.append(time_loop(config, args.skip))
                else:
                    compiled, host = time_compiled_and_host(config, args.skip)
                    compileds.append(compiled)
                    hosts.append(host)
        rows.append(dict(config=name, batch=int(config.train.batch_size),
                         timed=steps - args.skip, loops=loops, compileds=compileds,
                         loop=statistics.median(loops), compiled=statistics.median(compileds),
                         host=statistics.median(hosts)))
        print(rows[-1], flush=True)
    meta = T.run_meta(__file__, argv, skip=args.skip, rounds=args.rounds)
    T.publish(render(rows, meta), TT.DOC,
              TT.doc_section("loop-overhead", "default", jax.default_backend()), TT.DOC_HEADER,
              not args.no_write)


if __name__ == "__main__":
    main()
