"""Ambient diffusion for undersampled, noisy k-space (Daras et al. 2023; Aali et al. 2025, A-DPS training).

The training mask M is subsampled once more, M~ subset of M (a random share ``further_fraction`` of the
sampled non-ACS lines is dropped, ACS kept). The network sees only what M~ gives, and its error is measured
on ALL of M (density-weighted, W = 1/E[M]): lines seen by A but not by A~ make the network predict what it
was not shown, which is what lets it learn the full image (Ambient Diffusion, Thm 4.1).

Exactness with noisy data. The naive loss ||W^1/2 (A D(u) - y)||^2 rewards copying noise: on the lines of
M~ the target y carries the same noise n as the input, so E[-2 Re<W A h, n>] < 0 for a denoiser that passes
its input's noise through (measured: -2.65 in the loss's units for an identity-like denoiser). Here the
input is GSURE's (``losses.gsure.network_input`` with A~: u = B~ y~ + tau eps1 + eta (I - P~) eps2, one
fixed linear map B~, so the null space of A~ gets noise sigma too, not only tau), and the shared-noise term
is removed by Stein's lemma on the noise of M~ exactly as in GSURE:
    L = ||W^1/2 A h||^2 - 2 Re<W A h, y> + 2 Re<W A J_h B~ n'~, n'~>,   E[L] = E||W^1/2 A (h - x)||^2 - const.
The noise on M \\ M~ needs no correction: the input does not depend on it. With further_fraction = 0 this
is GSURE. Deviation from Aali et al.: the further mask is not fed to the network as an extra channel (one
D(x, sigma) interface for every loss and sampler).
"""

from __future__ import annotations

import torch

from ..physics.masks import acs_block
from ..physics.polyinv import ChebyshevInverse
from ..types import Denoiser, MRIBatch
from .gsure import gsure_loss


def further_mask(mask: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    """Drop a random ``fraction`` of the sampled columns outside the contiguous centre block. mask (B,1,1,W)."""
    B, W = mask.shape[0], mask.shape[-1]
    m = mask.reshape(B, W)
    centre = torch.zeros_like(m, dtype=torch.bool)
    for b in range(B):  # contiguous sampled block around the centre (ACS) is always kept
        lo, hi = acs_block(m[b])
        centre[b, lo:hi] = True
    drop = (torch.rand(m.shape, generator=generator, device=m.device) < fraction) & (m > 0) & ~centre
    return (m * (~drop)).reshape(mask.shape)


def ambient_loss(denoiser: Denoiser, batch: MRIBatch, generator: torch.Generator | None = None,
                 sigma_data: float = 0.5, inverse: ChebyshevInverse = ChebyshevInverse(),
                 further_fraction: float = 0.2, weighted: bool = True, divergence: str = "fd",
                 fd_rel: float = 1e-3, sigma: torch.Tensor | None = None, p_mean: float = -1.2,
                 p_std: float = 1.2) -> torch.Tensor:
    """Per-sample ambient loss (B,), per pixel (EDM-weighted). Never reads ``batch.target``."""
    m2 = further_mask(batch.mask, further_fraction, generator)
    return gsure_loss(denoiser, batch.without_target(), generator, sigma_data, inverse, divergence, fd_rel,
                      weighted, sigma, p_mean, p_std, input_mask=m2)
