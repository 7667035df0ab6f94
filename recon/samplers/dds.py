"""``dds``: denoise -> CG data consistency -> re-noise (DDS, Chung, Lee & Ye, ICLR 2024, Alg. 1 / Eq. 14-16;
DiffPIR, Zhu et al., CVPR 2023, Eq. 13-15), one network call per noise level. (Called ``cg`` before, after the
solver of its data-consistency step, ``physics.cg``; ``--sampler cg`` still selects it.)

At level sigma_i (VE, sigma per real channel), with sy2 = sigma_y^2 / 2 the measurement variance per real
channel and r_i^2 = sigma_i^2 sd^2 / (sigma_i^2 + sd^2) (sd = ``sigma_data``):

    x0_hat = D(x, sigma_i)
    x0     = argmin ||y - A x||^2 / (2 sy2) + dc_weight ||x - x0_hat||^2 / (2 r_i^2)
           = CG on (A^H A + lam_i) x = A^H y + lam_i x0_hat from x0_hat,   lam_i = dc_weight sy2 / r_i^2
    x      = x0 + sigma_{i+1} [ sqrt(1 - eta^2) eps + eta z ],   eps = (x - x0_hat) / sigma_i,  z ~ N(0, 1)

r_i^2 is the posterior variance of x0 given x_sigma under a Gaussian prior N(m, sd^2) (the proxy for
Cov[x0 | x] that makes lam_i the exact Bayesian weight; ``sigma_data`` may be a tensor broadcastable to
(B, H, W) for a per-pixel prior std). As sigma_y -> 0, lam_i -> 0 and the CG step becomes the hard projection
of x0_hat onto {A x = y}. The last level (sigma_{i+1} = 0) returns x0.

``perturb=True`` makes it an exact posterior sampler whenever p(x0 | x_sigma) = N(x0_hat, r^2) (Gaussian prior
with std ``sigma_data``): perturb-and-MAP (Papandreou & Yuille 2010) draws x0 ~ p(x0 | x, y) by solving the
same system with y -> y + n' (n' ~ CN(0, sigma_y^2)) and x0_hat -> x0_hat + (r / sqrt(dc_weight)) z', and eps is
taken from that sample, eps = (x - x0) / sigma_i; then (x0, eps) is an exact joint draw and any eta in
[0, 1] keeps x_{i+1} ~ p(x_{sigma_{i+1}} | y). Without it (DDS default) the variance is under-estimated, and
for eta < 1 the mean is biased as well (eps_hat = (x - x0_hat) / sigma carries signal, not only noise); in the
exact Gaussian test eta = 1 keeps the mean (variance ~ -60 %) while eta = 0.85 is off by ~0.5 posterior std.

``cg_iters`` (default 10) is chosen by a measured tolerance (``benchmarks/dc_tolerance.py``, BENCHMARKS.md "Data
consistency"): at every noise level the data residual ||A x - y|| of the CG step is within 10 % of that of the
converged solve (worst over levels, 3 simulated 8-coil 128^2 slices with ESPIRiT maps with and without support
crop, and the real 8-coil brain, 4x and 8x 1-D random masks: 8.9 %; the old default 5 missed it by up to 20 %
and gave 0.7-1.4 dB less at 4x). A 2 % tolerance needs 20-25 iterations at 4x and more than 40 on the simulated
8x slices, where the converged DC step costs quality (simulated 8x: 20 iterations -1.1 dB vs 10, converged -5 dB;
real brain: converged +0.2 to +0.9 dB): it fits noise in the near-null directions of A^H A, and stopping early
regularises. ``cg_tol`` (relative normal-equation residual) is not a good stop here: ||b|| contains lam x0_hat, so
at small sigma it ends the DC step before the first iteration.
"""

from __future__ import annotations

import math

import torch

from mri_diffusion.physics.linop import LinearOp
from mri_diffusion.types import Denoiser

from .common import NoiseSource, denoise, levels, noise_var_per_channel, prox_solve


def network_calls(steps: int, **options) -> int:
    return int(steps)


@torch.no_grad()
def sample(denoiser: Denoiser, y: torch.Tensor, A: LinearOp, sigmas: torch.Tensor, *, noise: NoiseSource,
           noise_std: torch.Tensor, callback=None, eta: float = 0.85, dc_weight: float = 1.0, cg_iters: int = 10,
           cg_tol: float = 0.0, sigma_data: float | torch.Tensor | None = None, perturb: bool = False) -> torch.Tensor:
    lv = levels(sigmas)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    (H, W), dev = y.shape[-2:], y.device
    sd = getattr(denoiser, "sigma_data", None) if sigma_data is None else sigma_data
    sd2 = torch.as_tensor(0.5 if sd is None else sd, dtype=torch.float32, device=dev) ** 2
    sy2 = noise_var_per_channel(noise_std).to(dev)  # (B,)
    x = lv[0] * noise.init((H, W), dev)
    for i, (s, s_next) in enumerate(zip(lv[:-1], lv[1:])):
        x0_hat = denoise(denoiser, x, s)
        r2 = s * s * sd2 / (s * s + sd2)  # posterior-variance proxy, scalar or per pixel
        lam = dc_weight * sy2.reshape(-1, 1, 1) / r2  # (B, 1, 1) or (B, H, W)
        v, yy = x0_hat, y
        if perturb:
            v = x0_hat + torch.sqrt(r2 / dc_weight) * noise.randn(i, (H, W), dev, sub=1)
            yy = y + torch.sqrt(sy2).reshape(-1, 1, 1, 1) * noise.randn(i, tuple(y.shape[1:]), dev, sub=2)
        x0 = prox_solve(A, yy, v, lam, cg_iters, cg_tol)
        if s_next > 0:
            eps = (x - (x0 if perturb else x0_hat)) / s
            z = noise.randn(i, (H, W), dev, sub=0)
            x = x0 + s_next * (math.sqrt(1 - eta * eta) * eps + eta * z)
        else:
            x = x0
        if callback is not None:
            callback(i, x, x0)
    return x.to(torch.complex64)
