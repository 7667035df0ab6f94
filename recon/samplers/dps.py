"""``dps``: diffusion posterior sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023, Alg. 1 / Eq. 16) on EDM
steps, with the measurement gradient taken through the denoiser by autograd.

Per level sigma_i -> sigma_{i+1} (one network call + one backward pass):

    x0_hat = D(x, sigma_i);   rho = ||y - A x0_hat||_2            (per slice, NON-squared, over all coils)
    x'     = x + (sigma_{i+1} - sigma_i) (x - x0_hat) / sigma_i                            (EDM Euler, default)
           | x0_hat + (s'^2/s^2)(x - x0_hat) + s' sqrt(1 - s'^2/s^2) z   (``stochastic=True``: VE ancestral)
    x      = x' - zeta * f * grad_x rho,        f = max(0, 1 - M sigma_y^2 / rho^2)

With f = 1 this is exactly the reference code (``torch.linalg.norm(y - A x0_hat)`` differentiated, times
``scale``), which equals the paper's step zeta_i = zeta' / ||y - A x0_hat|| on grad ||y - A x0_hat||^2 with
zeta' = zeta / 2 (A-DPS's ``l_ss = 1`` is zeta = 2 here); the normalisation by ||y - A x0_hat|| stands in for
1 / sigma_y^2 of the Gaussian likelihood, so the step alone does not know the noise level. f brings it in (the
discrepancy principle): M is the number of measured k-space entries (sampled entries x coils), M sigma_y^2 =
E||n||^2 the residual that the noise alone leaves, so the data term pulls less as the residual approaches the
noise level and stops pulling below it, instead of fitting the noise of y. sigma_y = 0 gives f = 1, the
reference step. The norm is per batch element (the reference uses batch 1), so batching changes nothing.
At the last level (sigma_{i+1} = 0) x' = x0_hat. DPS is an approximation (it ignores Cov[x0 | x]).
"""

from __future__ import annotations

import torch

from mri_diffusion.physics.linop import LinearOp
from mri_diffusion.types import Denoiser

from mri_diffusion.types import bcast

from .common import NoiseSource, levels, sigma_vec


def network_calls(steps: int, **options) -> int:
    """One forward (plus one backward) pass per level."""
    return int(steps)


def sample(denoiser: Denoiser, y: torch.Tensor, A: LinearOp, sigmas: torch.Tensor, *, noise: NoiseSource,
           noise_std: torch.Tensor, callback=None, zeta: float = 1.0, stochastic: bool = False) -> torch.Tensor:
    lv = levels(sigmas)
    B, (H, W), dev = y.shape[0], y.shape[-2:], y.device
    # E||n||^2 = M sigma_y^2 over the M measured entries (y is exactly zero off the mask); None: noiseless, f = 1
    floor = torch.as_tensor(noise_std, dtype=torch.float32, device=dev).reshape(-1) ** 2 * (y != 0).reshape(B, -1).sum(1)
    floor = None if bool((floor == 0).all()) else floor
    x = lv[0] * noise.init((H, W), dev)
    for i, (s, s_next) in enumerate(zip(lv[:-1], lv[1:])):
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            x0_hat = denoiser(xr, sigma_vec(s, xr)).to(torch.complex64)
            r = (y - A.forward(x0_hat)).reshape(B, -1)
            rho = torch.sqrt((r.real ** 2 + r.imag ** 2).sum(dim=1) + 1e-30)  # (B,), finite gradient at 0
            (grad,) = torch.autograd.grad(rho.sum(), xr)
        x0_hat = x0_hat.detach()
        with torch.no_grad():
            if s_next == 0:
                x_next = x0_hat
            elif stochastic:
                c = (s_next / s) ** 2
                x_next = x0_hat + c * (x - x0_hat) + s_next * (1 - c) ** 0.5 * noise.randn(i, (H, W), dev)
            else:
                x_next = x + (s_next - s) / s * (x - x0_hat)
            step = grad if floor is None else bcast((1 - floor / rho.detach() ** 2).clamp_min(0), grad) * grad
            x = (x_next - zeta * step).detach()
        if callback is not None:
            callback(i, x, x0_hat)
    return x.to(torch.complex64)
