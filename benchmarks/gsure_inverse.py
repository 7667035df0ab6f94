"""GSURE's approximate inverse at realistic conditioning: what P becomes, and the bias of the estimator.

Setting (the audit's): 8 birdcage coils whose maps are zero outside an elliptical head support (A^H A is
singular, as with ESPIRiT maps), a 1-D random mask at 4x or 8x, a smooth complex phantom. Prints
1. the spectrum of A^H A (exact, per readout row) and how much of the range the Chebyshev filter inverts;
2. how far B y is from the least-squares solution A^+ y (exact pseudo-inverse from the eigendecomposition)
   for noiseless and noisy y, for the Chebyshev inverse and for the old 10-iteration CG;
3. the Monte-Carlo bias of the GSURE estimate, mean(loss + ||W^1/2 A x||^2 - ||W^1/2 A (h - x)||^2) in
   standard errors, over ``--draws`` noise draws, for two nonlinear denoisers at sigma = 1.05 eta and 4 eta,
   with the Chebyshev inverse (the shipped estimator) and with 10 CG iterations (the old one).

Usage: python benchmarks/gsure_inverse.py [--size 64] [--accel 4] [--draws 400] [--iters 20] [--lam-min 0.01]
"""

from __future__ import annotations

import argparse
import math
import platform
from dataclasses import dataclass

import torch

from mri_diffusion.losses.common import crandn, re_inner
from mri_diffusion.losses.gsure import gsure_terms
from mri_diffusion.physics import Sense
from mri_diffusion.physics.cg import conjugate_gradient
from mri_diffusion.physics.fft import fft1c
from mri_diffusion.physics.masks import RandomMask, default_center_fraction
from mri_diffusion.physics.polyinv import ChebyshevInverse
from mri_diffusion.types import MRIBatch


def head_maps(coils: int, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth birdcage-like maps (B=1, C, H, W), zero outside an elliptical support, sum_c |S_c|^2 = 1 inside."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    supp = ((yy / 0.85) ** 2 + (xx / 0.7) ** 2 <= 1).float()
    maps = []
    for c in range(coils):
        a = 2 * math.pi * c / coils
        cy, cx = 1.1 * math.sin(a), 1.1 * math.cos(a)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        maps.append(torch.exp(-d2 / 1.2) * torch.exp(1j * (a + 0.5 * xx * math.cos(a) + 0.5 * yy * math.sin(a))))
    m = torch.stack(maps).to(torch.complex64) * supp
    m = m / torch.sqrt((m.abs() ** 2).sum(0, keepdim=True)).clamp_min(1e-12) * supp
    return m[None], supp


def phantom(supp: torch.Tensor) -> torch.Tensor:
    H, W = supp.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    mag = supp * (0.5 + 0.3 * torch.cos(3 * xx) * torch.sin(2 * yy) + 0.2 * ((xx**2 + yy**2) < 0.1).float())
    return (mag * torch.exp(1j * 0.3 * xx)).to(torch.complex64)[None]


def realistic_batch(K: int, H: int, accel: float, noise_std: float, seed: int = 0):
    """K copies of one slice with independent noise: (MRIBatch, x (K, H, W), generator)."""
    g = torch.Generator().manual_seed(seed)
    maps, supp = head_maps(8, H, H)
    sampler = RandomMask(accel, default_center_fraction(accel))
    mask = sampler.sample((H, H), seed).reshape(1, 1, 1, H)
    dens = sampler.density((H, H)).reshape(1, 1, 1, H)
    x = phantom(supp)
    rep = lambda t: t.expand(K, *t.shape[1:]).contiguous()  # noqa: E731
    y = rep(Sense(maps, mask)(x)) + crandn((K, 8, H, H), g, "cpu", noise_std / math.sqrt(2)) * mask
    batch = MRIBatch(kspace=y, mask=rep(mask), maps=rep(maps), density=rep(dens),
                     noise_std=torch.full((K,), noise_std))
    return batch, rep(x), g


def smooth_denoiser(u, s):
    s = s.reshape(-1, 1, 1)
    return (0.6 * u / (1 + s**2) + 0.3 * torch.tanh(3 * u.real) + 0.2j * torch.sin(2 * u.imag + u.real)
            + 0.1 * torch.roll(u, 1, -1))


def shrink_denoiser(u, s):
    s = s.reshape(-1, 1, 1)
    a = u.abs()
    return u * a / (a + s) + 0.05 * torch.roll(u, 2, -2)


@dataclass(frozen=True)
class OldCG:
    """The retired estimator's inverse: CG stopped after ``iters`` iterations (nonlinear in the rhs)."""

    iters: int = 10

    def solve(self, normal, b, b_max=None):
        return conjugate_gradient(normal, b, max_iter=self.iters)


def exact_spectrum(maps: torch.Tensor, mask: torch.Tensor):
    """Per readout row h: eigenpairs of the W x W block of A^H A (1-D masks decouple rows). float64."""
    C, H, W = maps.shape[1:]
    eye = torch.eye(W, dtype=torch.complex128)
    F = fft1c(eye, dim=0)  # the centred unitary DFT matrix
    FMF = F.conj().T @ torch.diag(mask.reshape(W).to(torch.complex128)) @ F
    S = maps[0].to(torch.complex128)
    out = []
    for h in range(H):
        N = sum(torch.diag(S[c, h].conj()) @ FMF @ torch.diag(S[c, h]) for c in range(C))
        out.append(torch.linalg.eigh(N))
    return out


def distances(batch, x, spec, inverses, thresh: float = 1e-6):
    """What B does to signal and to noise, against the exact pseudo-inverse (eigenvalues > thresh * max).

    signal: ||B A x - P x|| / ||P x|| (complex128, noiseless); noise: sqrt(E||B n||^2 / E||A^+ n||^2), the
    noise std of z relative to the least-squares solution's (Chebyshev: exact from the filter; CG: 32 draws).
    """
    A = Sense(batch.maps[:1].to(torch.complex128), batch.mask[:1].double())
    x0 = x[:1].to(torch.complex128)
    top = max(float(lam.max()) for lam, _ in spec)
    proj = torch.stack([V @ ((lam > thresh * top).to(V.dtype) * (V.conj().T @ x0[0, h]))
                        for h, (lam, V) in enumerate(spec)])
    lam = torch.cat([lam for lam, _ in spec])
    lam = lam[lam > thresh * top]
    ls_noise = float((1 / lam).sum())
    eta2 = 1.0
    res = {}
    for name, inv in inverses.items():
        z = inv.solve(A.normal, A.adjoint(A(x0)), torch.ones(1, dtype=torch.float64))[0]
        sig = float((z - proj).norm() / proj.norm())
        if isinstance(inv, ChebyshevInverse):
            noise = float((inv.filter(lam) ** 2 / lam).sum())
        else:
            g = torch.Generator().manual_seed(0)
            n = crandn((32, *A.maps.shape[1:]), g, "cpu").to(torch.complex128) * A.mask
            An = Sense(A.maps.expand(32, -1, -1, -1), A.mask.expand(32, -1, -1, -1))
            noise = float((inv.solve(An.normal, An.adjoint(n)).abs() ** 2).sum() / 32 / 2)
        res[name] = (sig, math.sqrt(noise * eta2 / ls_noise))
    return res


def bias(batch, x, g, inverse, denoiser, factor):
    K = batch.kspace.shape[0]
    eta = float(batch.noise_std[0]) / math.sqrt(2)
    t = gsure_terms(denoiser, batch, torch.full((K,), factor * eta), g, inverse, divergence="jvp")
    A = Sense(batch.maps, batch.mask)
    Wt = batch.mask / batch.density
    err = A(t["h"] - x)
    diff = t["sure"] + re_inner(A(x), Wt * A(x)) - re_inner(err, Wt * err)
    return float(diff.mean() / (diff.std() / math.sqrt(K)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--accel", type=float, default=4.0)
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--lam-min", type=float, default=0.01)
    ap.add_argument("--noise-std", type=float, default=0.05)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    cheb = ChebyshevInverse(a.iters, a.lam_min)
    inverses = {f"chebyshev K={a.iters}, lam_min={a.lam_min}": cheb, "CG 10 iterations (old)": OldCG(10)}
    batch, x, g = realistic_batch(a.draws, a.size, a.accel, a.noise_std)
    spec = exact_spectrum(batch.maps[:1], batch.mask[:1])
    lam = torch.cat([s[0] for s in spec])
    nz = lam[lam > 1e-9 * lam.max()]
    f = cheb.filter(nz)
    print(f"{a.size} x {a.size}, 8 coils, R={a.accel:g} ({int(batch.mask[0].sum())} lines): rank {nz.numel()} of "
          f"{lam.numel()}; nonzero eigenvalues: median {nz.median():.3g}, share below lam_min {float((nz < a.lam_min).float().mean()):.1%}, "
          f"max {lam.max():.4f}")
    print(f"P_K = f(A^H A): |1 - f| <= {cheb.accuracy():.3g} on [lam_min, 1]; over the range f is "
          f"mean {f.mean():.3f}, {float((f > 0.9).float().mean()):.1%} of range directions have f > 0.9, "
          f"{float((f < 0.5).float().mean()):.1%} have f < 0.5")
    print("against the least-squares solution A^+ y (eigenvalues > 1e-6 max): signal ||B A x - P x|| / ||P x||, "
          "noise std of B n relative to A^+ n")
    for name, (sig, noise) in distances(batch, x, spec, inverses).items():
        print(f"  {name:<34} signal {sig:.3f}   noise {noise:.4f}")
    print(f"GSURE bias over {a.draws} noise draws (mean / standard error; |z| < 3 is unbiased at this precision):")
    print(f"  {'inverse':<34}{'denoiser':<10}{'1.05 eta':>10}{'4 eta':>10}")
    for name, inv in inverses.items():
        for dname, den in (("smooth", smooth_denoiser), ("shrink", shrink_denoiser)):
            zs = [bias(batch, x, torch.Generator().manual_seed(1), inv, den, fac) for fac in (1.05, 4.0)]
            print(f"  {name:<34}{dname:<10}{zs[0]:>10.2f}{zs[1]:>10.2f}")


if __name__ == "__main__":
    main()
