"""PyTorch / diffusers side of the throughput benchmarks.

PyTorch and diffusers are NOT jaxdiff dependencies.  They live in a separate virtual environment
(default ``/tmp/jaxdiff-bench-venv``, override with ``--torch-python`` or the environment variable
``JAXDIFF_BENCH_TORCH_PYTHON``); ``python -m bench.train_throughput --setup-venv`` creates it.
This module is run by that environment's python, from the repository root, as a worker:

  python -m bench.torch_unet train  --iters 5 --warmup 2
  python -m bench.torch_unet sample --iters 5 --warmup 1 --samplers ddim:50,heun:18

and prints one line ``RESULT {json}``.  It imports only the standard-library helpers of
``bench.common`` besides torch and diffusers.

The network is the diffusers U-Net closest to jaxdiff's "default U-Net" (base 64, channel_mult
(1, 2, 2), 2 residual blocks per level, self-attention at 16x16 with one head, GroupNorm 32,
class table of 10 + 1 rows, the last row the null token); see docs/performance.md for how the
two differ.
"""
from __future__ import annotations

import argparse
import time

from bench.common import emit, summarize

NUM_CLASSES = 10
IMAGE = (32, 32, 3)


def build_unet():
    """diffusers' closest match to jaxdiff's default U-Net (see the module docstring)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE[0], in_channels=IMAGE[2], out_channels=IMAGE[2],
        block_out_channels=(64, 128, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,              # one head per attention block (head dim = width)
        norm_num_groups=32,
        resnet_time_scale_shift="scale_shift",  # AdaGN, as in jaxdiff's ResBlock
        num_class_embeds=NUM_CLASSES + 1,     # row NUM_CLASSES is the null (CFG) token
    )


def _versions() -> dict:
    import diffusers
    import torch

    return dict(torch=torch.__version__, diffusers=diffusers.__version__,
                torch_threads=torch.get_num_threads())


def train_worker(args) -> dict:
    import torch
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    net = build_unet().train()
    params = [p for p in net.parameters()]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator().manual_seed(1)
    b = args.batch
    images = torch.rand((b, IMAGE[2], IMAGE[0], IMAGE[1]), generator=gen) * 2 - 1  # NCHW
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen)

    def step(s: int) -> float:
        t = torch.randint(0, 1000, (b,))
        eps = torch.randn_like(images)
        x_t = sched.add_noise(images, eps, t)
        drop = torch.rand(b) < 0.1                                    # CFG condition dropout
        cond = torch.where(drop, torch.full_like(labels, NUM_CLASSES), labels)
        out = net(x_t, t, class_labels=cond).sample
        loss = torch.nn.functional.mse_loss(out, eps)                 # eps-MSE
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1.0 + s + 1) / (10.0 + s + 1))            # EMA with warm-up
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        return float(loss)

    t0 = time.perf_counter()
    loss0 = step(0)
    first = time.perf_counter() - t0
    for s in range(1, args.warmup):
        step(s)
    times, loss = [], loss0
    for s in range(args.warmup, args.warmup + args.iters):
        t0 = time.perf_counter()
        loss = step(s)
        times.append(time.perf_counter() - t0)
    return dict(side="torch", params=n_params, first_s=first, loss_first=loss0, loss_last=loss,
                batch=b, **summarize(times), **_versions())


def sample_worker(args, sampler: str, steps: int) -> dict:
    import torch
    from diffusers import DDIMScheduler, HeunDiscreteScheduler

    torch.manual_seed(0)
    net = build_unet().eval()
    n_params = sum(p.numel() for p in net.parameters())
    b, scale = args.batch, 2.0
    if sampler == "ddim":
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    else:
        sched = HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    def one_call(seed: int) -> tuple[float, int]:
        """The standard pipeline loop: one batched (cond, null) call per model evaluation."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
        both = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])
        sched.set_timesteps(steps)
        x = torch.randn((b, IMAGE[2], IMAGE[0], IMAGE[1]), generator=gen)
        x = x * sched.init_noise_sigma
        nfe = 0
        with torch.inference_mode():
            for t in sched.timesteps:
                x_in = sched.scale_model_input(torch.cat([x, x]), t)
                out = net(x_in, t, class_labels=both).sample
                cond, uncond = out.chunk(2)
                x = sched.step(uncond + scale * (cond - uncond), t, x).prev_sample
                nfe += 1
        return float(x.abs().mean()), nfe

    t0 = time.perf_counter()
    _, nfe = one_call(0)
    first = time.perf_counter() - t0
    for s in range(1, args.warmup):
        one_call(s)
    times = []
    for s in range(args.iters):
        t0 = time.perf_counter()
        one_call(100 + s)
        times.append(time.perf_counter() - t0)
    return dict(side="torch", sampler=sampler, steps=steps, nfe=nfe, params=n_params,
                first_s=first, batch=b, **summarize(times))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("train", "sample", "params"))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--samplers", default="ddim:50,heun:18",
                   help="comma-separated name:steps, name in {ddim, heun}")
    args = p.parse_args(argv)
    if args.mode == "params":
        net = build_unet()
        emit(dict(side="torch", params=sum(q.numel() for q in net.parameters()), **_versions()))
        return
    if args.mode == "train":
        args.batch = args.batch or 32
        emit(train_worker(args))
    else:
        args.batch = args.batch or 16
        out = dict(side="torch", runs={}, **_versions())
        for item in args.samplers.split(","):
            name, steps = item.split(":")
            out["runs"][name] = sample_worker(args, name, int(steps))
        out["params"] = next(iter(out["runs"].values()))["params"]
        emit(out)


if __name__ == "__main__":
    main()
