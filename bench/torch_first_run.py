"""PyTorch / diffusers side of ``bench.first_run torch``: the first command's network and recipe
trained with diffusers for a given wall time, then sampled.

Run by the benchmark venv's python (``bench/torch_unet.py`` explains the venv), from the
repository root:

  python -m bench.torch_first_run --data TRAIN.npz --out SAMPLES.npz --seconds 660 \
      --sample-steps 15 --num-samples 1000

TRAIN.npz holds ``images`` float32 (N, 32, 32, 1) in [-1, 1] and ``labels`` int (N,) (the
MNIST-5k training split, written by the jaxdiff side); SAMPLES.npz receives ``images`` uint8
(M, 32, 32, 1) and ``labels`` (M,), evaluated by the jaxdiff side with the pinned features.
Prints one line ``RESULT {json}``.

The recipe is configs/mnist5k.py's, in diffusers' terms: ``UNet2DModel`` with widths
(32, 64, 64), one residual block per level, self-attention with 4 heads at 8x8, GroupNorm 8,
AdaGN ("scale_shift") time conditioning and an 11-row class table (row 10 the null token);
v-prediction on the cosine schedule (``squaredcos_cap_v2``, 1,000 discrete steps); condition
dropout, Adam(W) learning rate, betas, warm-up, cosine decay floor, gradient clipping, batch and
EMA decay given by the jaxdiff side from configs/mnist5k.py (flags below), the EMA with warm-up.
The step count is fitted to the wall time from the measured rate of steps 2-20, so the learning
rate anneals fully within it (if the machine slows down later, training stops at the wall time
before the fitted count; both counts are reported).  Sampling:
``DPMSolverMultistepScheduler`` (DPM-Solver++(2M)) with classifier-free guidance, the (cond,
null) pair in one batched call.
"""
from __future__ import annotations

import argparse
import math
import time

from bench.common import emit

NUM_CLASSES = 10
PROBE_STEPS = 20


def build_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=16, norm_num_groups=8, resnet_time_scale_shift="scale_shift",
        num_class_embeds=NUM_CLASSES + 1)


def lr_at(step: int, total: int, lr: float, warmup: int, final_fraction: float) -> float:
    """Linear warm-up, then cosine decay to ``lr * final_fraction`` at ``total`` (as jaxdiff's
    ``learning_rate_schedule``)."""
    if step < warmup:
        return lr * step / warmup
    frac = min(1.0, (step - warmup) / max(total - warmup, 1))
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * frac)))


def train(args, images, labels):
    import torch
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    net = build_unet().train()
    params = list(net.parameters())
    opt = torch.optim.AdamW(params, lr=0.0, betas=(args.b1, args.b2), eps=args.eps,
                            weight_decay=args.weight_decay)
    ema = [p.detach().clone() for p in params]
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                          prediction_type="v_prediction")
    gen = torch.Generator().manual_seed(1)
    n, b = images.shape[0], args.batch
    order, pos = torch.randperm(n, generator=gen), 0
    total, step, start = None, 0, time.perf_counter()
    while True:
        if step == 1:
            after_first = time.perf_counter()
        if total is None and step == PROBE_STEPS:
            rate = (step - 1) / (time.perf_counter() - after_first)
            total = max(PROBE_STEPS + 1, step + int((args.seconds - (time.perf_counter() - start))
                                                    * rate))
        if (total is not None and step >= total) or time.perf_counter() - start > args.seconds:
            break
        if pos + b > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + b]
        pos += b
        x0, y = images[idx], labels[idx]
        t = torch.randint(0, 1000, (b,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = sched.add_noise(x0, eps, t)
        target = sched.get_velocity(x0, eps, t)
        drop = torch.rand(b, generator=gen) < args.p_uncond
        cond = torch.where(drop, torch.full_like(y, NUM_CLASSES), y)
        loss = torch.nn.functional.mse_loss(net(x_t, t, class_labels=cond).sample, target)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total or 10 ** 9, args.lr, args.warmup, args.final_lr_fraction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        step += 1
        decay = min(args.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return net.eval(), step, total, time.perf_counter() - start, float(loss.detach())


def sample(args, net):
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction", algorithm_type="dpmsolver++", solver_order=2)
    labels = np.arange(args.num_samples) % NUM_CLASSES
    gen = torch.Generator().manual_seed(2)
    out, start = [], time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, args.num_samples, args.sample_batch):
            y = torch.as_tensor(labels[lo:lo + args.sample_batch])
            both = torch.cat([y, torch.full_like(y, NUM_CLASSES)])
            sched.set_timesteps(args.sample_steps)
            x = torch.randn((len(y), 1, 32, 32), generator=gen) * sched.init_noise_sigma
            for t in sched.timesteps:
                pred = net(sched.scale_model_input(torch.cat([x, x]), t), t,
                           class_labels=both).sample
                c, u = pred.chunk(2)
                x = sched.step(u + args.guidance * (c - u), t, x).prev_sample
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                       .permute(0, 2, 3, 1).numpy())
    return np.concatenate(out), labels, time.perf_counter() - start


def main(argv=None) -> None:
    import diffusers
    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, required=True, help="training wall time")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sample-steps", type=int, default=15)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--sample-batch", type=int, default=250)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--b1", type=float, default=0.9)
    p.add_argument("--b2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--final-lr-fraction", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--p-uncond", type=float, default=0.1)
    args = p.parse_args(argv)
    with np.load(args.data) as d:
        images = torch.as_tensor(d["images"]).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(d["labels"]).long()
    net, steps, fitted, train_s, loss = train(args, images, labels)
    samples, sample_labels, sample_s = sample(args, net)
    np.savez(args.out, images=samples, labels=sample_labels)
    emit(dict(side="torch", train_steps=steps, fitted_steps=fitted, train_s=train_s,
              sample_s=sample_s,
              loss_last=loss, params=sum(q.numel() for q in net.parameters()),
              torch=torch.__version__, diffusers=diffusers.__version__,
              torch_threads=torch.get_num_threads()))


if __name__ == "__main__":
    main()
