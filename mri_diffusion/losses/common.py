"""Pieces shared by the losses: noise-level sampling, EDM weighting, complex noise, norms.

Noise convention (see ``mri_diffusion.types``): the diffusion level ``sigma`` is the per-real-channel
standard deviation (x_sigma = x + sigma * eps with i.i.d. N(0, 1) real and imaginary parts of eps).
Measurement noise ``noise_std`` = sigma_y is CN(0, sigma_y^2) per k-space entry, i.e. per-real-channel
std eta = sigma_y / sqrt(2).
"""

from __future__ import annotations

import math

import torch

from ..types import bcast  # noqa: F401  (re-exported: the losses broadcast per-sample levels with it)


def crandn(shape, generator: torch.Generator | None, device, std: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Complex Gaussian with i.i.d. N(0, std^2) real and imaginary parts; std broadcast over dim 0."""
    re = torch.randn(shape, generator=generator, device=device)
    im = torch.randn(shape, generator=generator, device=device)
    if isinstance(std, torch.Tensor):
        std = std.reshape(-1, *([1] * (len(shape) - 1)))
    return torch.complex(re, im) * std


def sample_sigma(batch_size: int, generator: torch.Generator | None, device, p_mean: float = -1.2,
                 p_std: float = 1.2, sigma_min: torch.Tensor | float = 0.0, sigma_max: float = 80.0) -> torch.Tensor:
    """EDM log-normal noise levels (Karras et al. 2022, Table 1), clamped to [sigma_min, sigma_max]. (B,)"""
    s = torch.exp(p_mean + p_std * torch.randn(batch_size, generator=generator, device=device))
    return torch.minimum(torch.maximum(s, torch.as_tensor(sigma_min, device=device, dtype=s.dtype)),
                         torch.tensor(sigma_max, device=device))


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 (EDM): unit effective weight per level."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sq_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm (B,)."""
    return (x.abs() ** 2).reshape(x.shape[0], -1).sum(1)


def re_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Re<a, b> = real dot product of the real representations (B,)."""
    return (a.conj() * b).real.reshape(a.shape[0], -1).sum(1)


def per_channel_noise(noise_std: torch.Tensor) -> torch.Tensor:
    """eta = sigma_y / sqrt(2): k-space noise std per real channel. (B,)"""
    return noise_std / math.sqrt(2.0)


