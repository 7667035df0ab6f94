"""A^H A for SENSE with a 1-D Cartesian mask, the operator CG data consistency applies 4-6 times per noise
level: the generic 2-D path (A^H(A x), two 2-D centred FFTs per coil), and ``Sense.normal`` (1-D FFTs along
the phase-encoding axis, centring shifts folded into cached maps/mask). Same inputs, same run; prints the
time of each, the ratio, and the largest difference between the two results.

Usage: python benchmarks/sense_normal.py [--coils 15] [--size 320] [--batch 4] [--repeats 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mri_diffusion.physics import Sense  # noqa: E402
from mri_diffusion.physics.masks import RandomMask  # noqa: E402
from recon.experiment import machine_line  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    B, C, N = a.batch, a.coils, a.size
    maps = torch.randn(B, C, N, N, dtype=torch.complex64, generator=g).to(dev)
    mask = RandomMask(4.0).sample((N, N), 0).to(dev)[None].expand(B, 1, 1, N).contiguous()
    x = torch.randn(B, N, N, dtype=torch.complex64, generator=g).to(dev)
    A = Sense(maps, mask)

    def generic(v):
        return A.adjoint(A.forward(v))

    def timed(fn):
        fn(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(a.repeats):
            out = fn(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / a.repeats, out

    t_gen, r_gen = timed(generic)
    t_new, r_new = timed(A.normal)
    err = float((r_gen - r_new).abs().max() / r_gen.abs().max())
    print(f"machine: {machine_line(dev)}")
    print(f"A^H A, batch {B} x {C} coils x {N} x {N}, 1-D mask R=4: generic 2-D path {1e3 * t_gen:.1f} ms, "
          f"Sense.normal {1e3 * t_new:.1f} ms, ratio {t_gen / t_new:.2f}x; max relative difference {err:.1e}")


if __name__ == "__main__":
    main()
