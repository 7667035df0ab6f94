"""GSURE on undersampled, noisy multi-coil k-space: a denoising loss that never sees a clean image.

Model: y = A x + n, A = M F S (``Sense``), n ~ CN(0, sigma_y^2) on sampled entries (eta = sigma_y/sqrt 2
per real channel). With W = 1/p the inverse sampling density (p = E[M], from the mask sampler), the
density-weighted measurement-domain error has E_M ||W^1/2 A (h - x)||^2 = ||h - x||^2 for coil maps with
sum_c |S_c|^2 = 1, so averaging over training masks covers the whole image (Kawar et al. 2023 weight
every sampled k-space line by 1/p; ENSURE's W^2 = E[P]).

Network input, from y only, through ONE FIXED LINEAR map B = p(A^H A) A^H (``physics.polyinv``: Chebyshev
coefficients that do not depend on y; P_K = B A = f_K(A^H A) is a spectral filter, not CG's data-dependent
Krylov map, see the module docstring there):
    z = B y = P_K x + e,  e = B n,    u = z + tau eps1 + eta (I - P_K) eps2,   tau^2 = sigma^2 - eta^2
(the sigma >= eta rule: training levels never go below the noise already in the data). In an eigenvector of
A^H A with eigenvalue lam the noise of u has variance  tau^2 + eta^2 [f(lam)^2 / lam + (1 - f(lam))^2]  per
real channel: exactly sigma^2 in the null space (f = 0) and for single-coil Cartesian A (lam in {0, 1});
for multi-coil data it is eta^2 / lam + tau^2 where the filter inverts (the g-factor, up to 1/lam_min), and
in the roll-off below lam_min it can dip to tau^2 + eta^2 / (1 + lam) >= sigma^2 - eta^2 / 2.

Loss (Stein's lemma on n; u depends on n only through the linear e = B n; terms independent of n do not
matter):
    ||W^1/2 A (h - x)||^2 = ||W^1/2 A h||^2 - 2 Re<W A h, y> + 2 Re<W A h, n> + ||W^1/2 A x||^2,
    E Re<W A h(u), n> = E Re<W A J_h(u) B n', n'>,  n' a fresh noise draw (Hutchinson, same B).
So   L = ||W^1/2 A h||^2 - 2 Re<W A h, y> + 2 Re<W A J_h B n', n'>  has  E[L] = E||W^1/2 A (h - x)||^2 - const.
J_h B n' is a JVP (exact) or a finite difference (two network calls); both run in fp32 even under bf16
autocast (a difference of two bf16 passes is mostly rounding). The three applications of B (to y, n' and
A^H A eps2) run as one batched iteration of 3B right-hand sides.

``input_mask`` (ambient, ``losses.ambient``): the network sees only the lines of a further mask M~ subset M,
u built as above from A~ = M~ F S; the fit is still over all of M, and the Stein term only needs the noise
on M~ (the noise on M \\ M~ is independent of u).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..physics.polyinv import ChebyshevInverse, sense_bound
from ..physics.sense import Sense
from ..types import Denoiser, MRIBatch
from .common import bcast, crandn, edm_weight, per_channel_noise, re_inner, sample_sigma, sq_norm


@dataclass(frozen=True)
class GsureInput:
    u: torch.Tensor        # network input (B, H, W)
    z: torch.Tensor        # B y (B, H, W): the approximate A^+ y, linear in y
    probe_n: torch.Tensor  # fresh measurement noise n' on the input mask (B, C, H, W)
    probe_e: torch.Tensor  # e' = B n' (B, H, W)


def network_input(batch: MRIBatch, sigma: torch.Tensor, generator: torch.Generator | None,
                  inverse: ChebyshevInverse = ChebyshevInverse(), input_mask: torch.Tensor | None = None
                  ) -> GsureInput:
    """u (the noisy filtered image at level sigma) and the Hutchinson probe, from k-space alone."""
    mask = batch.mask if input_mask is None else input_mask
    y, maps = batch.kspace * mask, batch.maps
    B, dev = y.shape[0], y.device
    eta = per_channel_noise(batch.noise_std.to(dev))
    img_shape = (B, *y.shape[-2:])
    n_probe = crandn(y.shape, generator, dev, eta) * mask
    eps1, eps2 = crandn(img_shape, generator, dev), crandn(img_shape, generator, dev)
    A = Sense(maps, mask)
    A3 = Sense(maps.repeat(3, 1, 1, 1), mask.repeat(3, 1, 1, 1))
    rhs = torch.cat([A.adjoint(y), A.adjoint(n_probe), A.normal(eps2)])
    sol = inverse.solve(A3.normal, rhs, sense_bound(maps, mask).repeat(3))
    z, e_probe, p_eps2 = sol[:B], sol[B:2 * B], sol[2 * B:]
    tau = torch.sqrt(torch.clamp(sigma**2 - eta**2, min=0.0))
    u = z + bcast(tau, z) * eps1 + bcast(eta, z) * (eps2 - p_eps2)
    return GsureInput(u, z, n_probe, e_probe)


def output_and_directional(denoiser: Denoiser, u: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor,
                           method: str = "fd", fd_rel: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, J_h(u) v) with h = D(u, sigma), in fp32 even inside a bf16 autocast region.

    'jvp': forward-mode AD (exact). 'fd': forward difference with step fd_rel * sigma / rms(v) (two network
    calls). Under autocast a bf16 difference is mostly rounding (measured relative error 1.5x-476x), so
    autocast (and cuDNN's TF32) is switched off here: the divergence, and the h it is taken around, are fp32.
    """
    with torch.autocast(device_type=u.device.type, enabled=False), _no_tf32():
        if method == "jvp":
            return torch.func.jvp(lambda w: denoiser(w, sigma), (u,), (v,))
        h = denoiser(u, sigma)
        rms = torch.sqrt(sq_norm(v) / v[0].numel()).clamp_min(1e-12)
        delta = bcast(fd_rel * sigma / rms, u)
        return h, (denoiser(u + delta * v, sigma) - h) / delta


def _no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa) on CUDA: as coarse as bf16 for a difference
    quotient. Switch it off for the divergence's two passes (a no-op on CPU)."""
    c = torch.backends.cudnn
    return c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=False)


def gsure_terms(denoiser: Denoiser, batch: MRIBatch, sigma: torch.Tensor, generator: torch.Generator | None,
                inverse: ChebyshevInverse = ChebyshevInverse(), divergence: str = "fd", fd_rel: float = 1e-3,
                weighted: bool = True, input_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The unscaled GSURE pieces per sample: 'fit', 'div', 'sure' = fit + div, 'h' (denoiser output), 'z'."""
    if batch.target is not None:
        batch = batch.without_target()  # GSURE must not see clean images, whatever the caller passes
    inp = network_input(batch, sigma, generator, inverse, input_mask)
    A = Sense(batch.maps, batch.mask)
    W = (batch.mask / batch.density.clamp_min(1e-6)) if weighted else batch.mask
    h, jv = output_and_directional(denoiser, inp.u, sigma, inp.probe_e, divergence, fd_rel)
    Ah = A(h)
    fit = re_inner(Ah, W * Ah) - 2 * re_inner(W * Ah, batch.kspace)
    div = 2 * re_inner(W * A(jv), inp.probe_n)
    return {"fit": fit, "div": div, "sure": fit + div, "h": h, "z": inp.z}


def gsure_loss(denoiser: Denoiser, batch: MRIBatch, generator: torch.Generator | None = None,
               sigma_data: float = 0.5, inverse: ChebyshevInverse = ChebyshevInverse(), divergence: str = "fd",
               fd_rel: float = 1e-3, weighted: bool = True, sigma: torch.Tensor | None = None,
               p_mean: float = -1.2, p_std: float = 1.2, input_mask: torch.Tensor | None = None) -> torch.Tensor:
    """EDM-weighted GSURE loss per sample (B,), per pixel. sigma >= eta enforced (sigma_min = 1.05 eta).

    The value is an unbiased estimate of the weighted error lambda ||W^1/2 A (h - x)||^2 / N MINUS the
    unknown constant lambda ||W^1/2 A x||^2 / N, so it is often negative and noisy; only its gradient (and
    differences between denoisers on the same data) mean something.
    """
    B, dev = batch.kspace.shape[0], batch.kspace.device
    eta = per_channel_noise(batch.noise_std.to(dev))
    if sigma is None:
        sigma = sample_sigma(B, generator, dev, p_mean, p_std, sigma_min=1.05 * eta)
    elif bool(torch.any(sigma < eta)):
        raise ValueError("GSURE needs sigma >= the data's noise level (per real channel)")
    t = gsure_terms(denoiser, batch, sigma, generator, inverse, divergence, fd_rel, weighted, input_mask)
    npix = batch.kspace.shape[-2] * batch.kspace.shape[-1]
    return edm_weight(sigma, sigma_data) * t["sure"] / npix
