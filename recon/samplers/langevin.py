"""``langevin``: annealed Langevin posterior sampling (Jalal, Arvinte, Daras, Price, Dimakis & Tamir,
NeurIPS 2021 "Robust compressed sensing MRI with deep generative priors", Alg. 1 / Eq. 5; NCSN annealed
Langevin of Song & Ermon 2019, Alg. 1).

For each positive level sigma_i, ``n_steps`` unadjusted Langevin steps (one network call each):

    x <- x + eta_i (score(x, sigma_i) + g) + sqrt(2 eta_i) z,        eta_i = step_size * sigma_i^2

    g = A^H (y - A x) / (sy2 + gamma^2 sigma_i^2)    (annealed noisy-measurement likelihood, Jalal Eq. 5,
                                                       sy2 = sigma_y^2 / 2 per real channel)
      | likelihood_scale * ||score|| * A^H (y - A x) / ||A^H (y - A x)||      (``normalize=True``: the CSGM
                                                       code, gradient normalised to the prior-score norm, x 5)

eta_i = step_size * sigma_i^2 is NCSN's eps (sigma_i / sigma_L)^2 with step_size = eps / sigma_L^2; it keeps
eta_i * Lipschitz(score + g) <~ step_size (1 + 1/gamma^2) (stable below 2), so step_size is the dimensionless
knob. Default 0.5; with ``normalize=True`` the likelihood move is ~ likelihood_scale * step_size * |x - x0_hat|,
stable only for likelihood_scale * step_size <~ 1, so the default there is 0.5 / likelihood_scale. A chain that
does not mix leaves a relative variance excess ~ 1 / (step_size * steps per e-fold of sigma).

The trailing 0 of ``sigmas`` is not a level; ``final_denoise=True`` returns D(x, sigma_last) (one more call; a
posterior-mean-like estimate, not a sample) instead of the last iterate.
With a well-mixed chain the last level targets p_{sigma_L}(x) N(y; A x, sy2 + gamma^2 sigma_L^2), i.e. the exact
posterior as sigma_L -> 0 (with ``normalize=False``).
"""

from __future__ import annotations

import torch

from mri_diffusion.physics.linop import LinearOp
from mri_diffusion.types import Denoiser, bcast

from .common import NoiseSource, denoise, levels, likelihood_grad, noise_var_per_channel, score_and_denoised


def network_calls(steps: int, n_steps: int = 3, final_denoise: bool = False, **options) -> int:
    return int(steps) * int(n_steps) + int(bool(final_denoise))


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


@torch.no_grad()
def sample(denoiser: Denoiser, y: torch.Tensor, A: LinearOp, sigmas: torch.Tensor, *, noise: NoiseSource,
           noise_std: torch.Tensor, callback=None, n_steps: int = 3, step_size: float | None = None, gamma: float = 1.0,
           normalize: bool = False, likelihood_scale: float = 5.0, final_denoise: bool = False) -> torch.Tensor:
    lv = levels(sigmas)
    (H, W), dev = y.shape[-2:], y.device
    sy2 = noise_var_per_channel(noise_std).to(dev)
    x = lv[0] * noise.init((H, W), dev)
    x0_hat = x
    if step_size is None:
        step_size = 0.5 / likelihood_scale if normalize else 0.5
    for i, s in enumerate(lv[:-1]):
        eta = step_size * s * s
        denom = sy2 + (gamma * s) ** 2
        if not normalize and bool((denom <= 0).any()):
            raise ValueError("noise_std = 0 needs gamma > 0 (or normalize=True)")
        for k in range(n_steps):
            sc, x0_hat = score_and_denoised(denoiser, x, s)
            g = likelihood_grad(A, x, y)
            if normalize:
                g = g * bcast(likelihood_scale * _norm(sc) / _norm(g).clamp_min(1e-30), g)
            else:
                g = g / bcast(denom, g)
            x = x + eta * (sc + g) + (2 * eta) ** 0.5 * noise.randn(i * n_steps + k, (H, W), dev)
        if callback is not None:
            callback(i, x, x0_hat)
    if final_denoise:
        x = denoise(denoiser, x, lv[-2])
    return x.to(torch.complex64)
