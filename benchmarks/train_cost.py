"""Time per training step of gsure (multi-coil) and ambient relative to dsm, measured side by side.

Same batch, same network, same optimizer step; the median of several steps after a warm-up. Prints the
machine. Usage: python benchmarks/train_cost.py [--size 128] [--coils 8] [--batch 4] [--preset small]
[--inverse-iters 20] [--lambda-min 0.01] [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from mri_diffusion.config import LossOptions
from mri_diffusion.losses import make_loss
from mri_diffusion.nn import build_denoiser, count_parameters
from mri_diffusion.physics import Sense
from mri_diffusion.physics.masks import RandomMask
from mri_diffusion.types import MRIBatch


def synthetic_batch(B: int, C: int, H: int, W: int, device) -> MRIBatch:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    x = ((yy**2 / 0.8 + xx**2 / 0.6) < 0.7).float() * (1 + 0.3 * torch.cos(6 * xx))
    x = (x * torch.exp(1j * 0.5 * yy)).to(torch.complex64).expand(B, H, W).contiguous()
    maps = torch.complex(torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g))
    maps = torch.nn.functional.avg_pool2d(torch.view_as_real(maps).permute(0, 1, 4, 2, 3).reshape(B, 2 * C, H, W),
                                          9, 1, 4).reshape(B, C, 2, H, W).permute(0, 1, 3, 4, 2).contiguous()
    maps = torch.view_as_complex(maps)
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(1, keepdim=True))
    sampler = RandomMask(4.0)
    mask = torch.stack([sampler.sample((H, W), s) for s in range(B)])
    density = sampler.density((H, W)).expand(B, 1, 1, W).contiguous()
    sigma_y = 0.01
    y = Sense(maps, mask)(x) + sigma_y / math.sqrt(2) * torch.complex(
        torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)) * mask
    return MRIBatch(kspace=y, mask=mask, maps=maps, density=density, noise_std=torch.full((B,), sigma_y),
                    target=x).to(device)


def time_step(loss_name, opts, net, batch, device, repeats, amp: bool = False):
    """Median seconds of one optimizer step (loss, backward, AdamW) over ``repeats`` steps after one warm-up.
    ``amp``: bf16 autocast around the loss, as the training loop does on CUDA (benchmarks/gpu_check.py)."""
    fn = make_loss(loss_name, opts)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            per_sample = fn(net, batch, torch.Generator(device=device).manual_seed(i))
        loss = per_sample.float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # first step is warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--inverse-iters", type=int, default=LossOptions().inverse_iters)
    ap.add_argument("--lambda-min", type=float, default=LossOptions().lambda_min)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    device = torch.device(a.device)
    torch.manual_seed(0)
    net = build_denoiser(a.preset).to(device)
    batch = synthetic_batch(a.batch, a.coils, a.size, a.size, device)
    opts = LossOptions(inverse_iters=a.inverse_iters, lambda_min=a.lambda_min)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    print(f"network '{a.preset}' ({count_parameters(net) / 1e6:.2f} M parameters), batch {a.batch} x {a.coils} coils x "
          f"{a.size} x {a.size}; gsure and ambient: Chebyshev inverse with {a.inverse_iters} applications of A^H A "
          f"(lambda_min {a.lambda_min}; 3 right-hand sides batched), 1 Hutchinson probe, fp32 finite-difference "
          f"divergence (2 network calls)")
    res = {}
    for name in ("dsm", "gsure", "ambient"):
        res[name] = time_step(name, opts, net, batch, device, a.repeats)
    print(f"{'loss':<10}{'s/step':>10}{'x dsm':>8}")
    for name, t in res.items():
        print(f"{name:<10}{t:>10.3f}{t / res['dsm']:>8.2f}")


if __name__ == "__main__":
    main()
