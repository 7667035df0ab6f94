"""Tweedie-consistent training from fully sampled but noisy multi-coil k-space (no clean image).

Daras, Dimakis & Daskalakis, "Consistent Diffusion Meets Tweedie" (ICML 2024, arXiv 2404.10177); the
authors' code: giannisdaras/ambient-tweedie train_text_to_image_lora_sdxl.py and giannisdaras/ambient-utils
ambient_utils/loss.py (anchors.md sections 3.5, 4.4).

White image noise from multi-coil k-space (``noisy_image``). Data y = F S x + n (mask all ones), n ~ CN(0,
sigma_y^2) i.i.d. over coils and k-space, i.e. eta = sigma_y / sqrt(2) per real channel. With w = sum_c |S_c|^2
(coil combination = the adjoint S^H F^H with normalised maps; w = 1 on the maps' support, 0 outside):
    S^H F^H y = w x + S^H F^H n,   Cov(S^H F^H n) = eta^2 diag(w) per real channel   (F unitary, n white),
so on the support the combined image carries white noise of exactly eta and none outside (where also the
signal is 0). We add independent eta sqrt(1 - w) eps' there (any w in [0, 1] pointwise), giving
    x_n = S^H F^H y + eta sqrt(1 - w) eps' = x + eta n',   n' ~ N(0, I) per real channel, white everywhere,
with x = w x_true the image the prior learns (what A = F S sees; equals x_true on the support). Maps with
w > 1 (not normalised) would give noise above eta and are refused. Coil noise is assumed white and
uncorrelated across coils (prewhitened upstream); a noise covariance is not part of ``MRIBatch``, so
prewhitening is out of scope here. Only fully sampled masks are accepted: the undersampled variant
(GSURE/ambient above sigma_n) is not implemented.

With sigma_n = eta, rho = sigma_n^2 / sigma^2 and lambda(sigma) the EDM weight (``common.edm_weight``):

(1) sigma >= sigma_n, double Tweedie (anchors.md 4.4; the authors' ``from_x0_pred_to_xnature_pred_ve_to_ve``):
    x_sigma = x_n + sqrt(sigma^2 - sigma_n^2) eps,  E[x_n | x_sigma] = rho x_sigma + (1 - rho) E[x0 | x_sigma],
    L_DT = lambda(sigma) || rho x_sigma + (1 - rho) D(x_sigma, sigma) - x_n ||^2 / N.
  Minimised by the clean posterior mean D = E[x0 | x_sigma]. The error of D enters with weight
  lambda (1 - rho)^2, which vanishes at sigma = sigma_n (the authors regress unweighted likewise); sigma is
  EDM log-normal truncated to [sigma_n, 80], so no sample is spent where the term is empty.

(2) sigma < sigma_n, consistency (the authors' two-draw product of residuals): for t >= sigma_n,
    x_t = x_n + sqrt(t^2 - sigma_n^2) eps,  x0_t = D(x_t, t),
    x_s^k = x0_t + (s^2/t^2)(x_t - x0_t) + s sqrt(1 - s^2/t^2) z_k,   k = 1, 2, z_1, z_2 independent
  (the DDPM/EDM posterior step p(x_s | x_t, x0 = x0_t), VE form of the authors' ``move_one_step``), and
    c = Re< D(x_s^1, s) - x0_t, D(x_s^2, s) - x0_t > / N,
    E[c | x_t] = || E[D(x_s, s) | x_t] - x0_t ||^2 / N >= 0,
  zero for every x_t iff the model's predictions are a martingale along its own reverse step. For Gaussian
  data the posterior mean is linear, so the one-step draw gives the true E[D(x_s) | x_t] and the oracle has
  E[c] = 0 exactly; for other data a single large step t -> s is an approximation (biased by how far p(x_s |
  x_t) is from Gaussian), which is why t is kept near sigma_n (``t_ratio``). Stop-gradient as in the
  authors' ``torch.set_grad_enabled(args.with_grad)`` block: by default (``consistency_grad=False``) x0_t and
  the draws are constants and only D(x_s^k, s) is trained, so E[grad c] = grad ||E[D(x_s)] - x0_t||^2 with the
  upper level (learnt exactly by (1)) as a fixed target. (The authors' shipped config sets consistency_coeff
  0 and neither it nor the argument parser defines ``with_grad``; their default is unknown.)
  Levels: t log-uniform in [sigma_n, t_ratio sigma_n]; s EDM log-normal truncated to (0, sigma_n). The
  authors instead start at the training level (``run_consistency_everywhere``) and step 1..100 DDPM steps
  down, so s need not be below sigma_n; their product is an unweighted mean, ours is EDM-weighted at s.

Per-sample loss (B,): L_i = L_DT,i + [i in C] (weight / fraction) lambda(s_i) c_i, where C is a random subset
of K = floor(fraction B + u) samples (u ~ U[0, 1): E[K] = fraction B exactly, so the batch mean has expectation
mean L_DT + weight E[lambda c] whatever the fraction; the fraction sets cost and variance only).

Cost per step in network evaluations (B batch, K ~ fraction B): B with grad (1), K without grad (x0_t; with
grad if consistency_grad), 2K with grad (both draws in one call): B + 3K evaluations in 3 calls, i.e.
(1 + 3 fraction) x a DSM step's forward work and (1 + 2 fraction) x its backward (0.25: 1.75x / 1.5x).
"""

from __future__ import annotations

import math

import torch

from ..physics.fft import ifft2c
from ..types import Denoiser, MRIBatch
from .common import bcast, crandn, edm_weight, per_channel_noise, re_inner, sq_norm
from .gsure import gsure_loss

SIGMA_MAX = 80.0    # EDM's largest level
SIGMA_MIN = 0.002   # EDM's smallest level (floor of s, unless sigma_n itself is below it)


def noisy_image(batch: MRIBatch, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_n (B, H, W), sigma_n (B,)): the coil-combined image with white noise eta = sigma_n everywhere.

    Refuses what the derivation above does not cover: undersampled masks, maps with sum_c |S_c|^2 > 1,
    no noise. Reads kspace, mask, maps, noise_std only.
    """
    y, maps, mask = batch.kspace, batch.maps, batch.mask
    if not bool(torch.all(mask == 1)):
        raise ValueError("tweedie needs fully sampled k-space (mask all ones; prepare with -R 1 and mask "
                         "type random); the undersampled variant is not implemented (use gsure or ambient)")
    eta = per_channel_noise(batch.noise_std.to(y.device).float())
    if not bool(torch.all(eta > 0)):
        raise ValueError("tweedie needs a known noise level noise_std > 0 per slice (for clean data use dsm)")
    w = (maps.abs() ** 2).sum(1)
    if float(w.max()) > 1 + 1e-3:
        raise ValueError(f"coil maps must satisfy sum_c |S_c|^2 <= 1 (max {float(w.max()):.4f}); the combined "
                         f"image's noise would exceed sigma_n")
    combined = torch.sum(maps.conj() * ifft2c(y * mask), dim=1)
    fill = torch.sqrt(torch.clamp(1 - w, min=0.0))
    x_n = combined + crandn(combined.shape, generator, y.device, eta) * fill
    return x_n, eta


def lognormal_above(lo: torch.Tensor, generator, p_mean: float, p_std: float, hi: float = SIGMA_MAX) -> torch.Tensor:
    """EDM log-normal levels conditioned on sigma >= lo (B,), by the inverse CDF of the upper tail."""
    u = torch.rand(lo.shape, generator=generator, device=lo.device, dtype=torch.float64).clamp_min(1e-12)
    z_lo = (torch.log(lo.double()) - p_mean) / p_std
    z = -torch.special.ndtri(u * torch.special.ndtr(-z_lo))
    s = torch.exp(p_mean + p_std * z).float()
    return torch.minimum(torch.maximum(s, lo), torch.maximum(torch.full_like(lo, hi), lo))


def lognormal_below(hi: torch.Tensor, generator, p_mean: float, p_std: float) -> torch.Tensor:
    """EDM log-normal levels conditioned on sigma < hi (B,), floored at min(SIGMA_MIN, hi / 2)."""
    u = torch.rand(hi.shape, generator=generator, device=hi.device, dtype=torch.float64).clamp_min(1e-12)
    z_hi = (torch.log(hi.double()) - p_mean) / p_std
    s = torch.exp(p_mean + p_std * torch.special.ndtri(u * torch.special.ndtr(z_hi))).float()
    return torch.minimum(torch.maximum(s, torch.clamp(hi / 2, max=SIGMA_MIN)), hi)


def add_noise(x_n: torch.Tensor, sigma_n: torch.Tensor, sigma: torch.Tensor, generator) -> torch.Tensor:
    """x_sigma = x_n + sqrt(sigma^2 - sigma_n^2) eps: total noise sigma per real channel (sigma >= sigma_n)."""
    return x_n + crandn(x_n.shape, generator, x_n.device, torch.sqrt(torch.clamp(sigma**2 - sigma_n**2, min=0.0)))


def double_tweedie(denoiser: Denoiser, x_n: torch.Tensor, sigma_n: torch.Tensor, sigma: torch.Tensor,
                   generator) -> torch.Tensor:
    """The residual rho x_sigma + (1 - rho) D(x_sigma, sigma) - x_n (B, H, W), rho = sigma_n^2 / sigma^2. Eq. (1)."""
    if bool(torch.any(sigma < sigma_n)):
        raise ValueError("double Tweedie needs sigma >= sigma_n (below it use the consistency term)")
    x_sigma = add_noise(x_n, sigma_n, sigma, generator)
    rho = bcast(sigma_n**2 / sigma**2, x_n)
    return rho * x_sigma + (1 - rho) * denoiser(x_sigma, sigma) - x_n


def reverse_step(x_t: torch.Tensor, x0_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, generator) -> torch.Tensor:
    """One draw of p(x_s | x_t, x0 = x0_t): x0_t + (s^2/t^2)(x_t - x0_t) + s sqrt(1 - s^2/t^2) z. (B, H, W)"""
    r = bcast((s / t) ** 2, x_t)
    return x0_t + r * (x_t - x0_t) + crandn(x_t.shape, generator, x_t.device, s * torch.sqrt(1 - (s / t) ** 2))


def consistency(denoiser: Denoiser, x_n: torch.Tensor, sigma_n: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                generator, grad: bool = False) -> torch.Tensor:
    """The two-draw estimator c = Re<D(x_s^1, s) - x0_t, D(x_s^2, s) - x0_t> / N per sample (B,). Eq. (2).

    t >= sigma_n >= s (B,). Two network calls: D(x_t, t) (under no_grad unless ``grad``) and both draws
    batched as one call of 2B with grad.
    """
    if bool(torch.any(t < sigma_n)) or bool(torch.any(s > t)):
        raise ValueError("consistency needs t >= sigma_n and s <= t")
    B = x_n.shape[0]
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        x_t = add_noise(x_n, sigma_n, t, generator)
        x0_t = denoiser(x_t, t)
        xs = torch.cat([reverse_step(x_t, x0_t, t, s, generator), reverse_step(x_t, x0_t, t, s, generator)])
    d = denoiser(xs, torch.cat([s, s])) - torch.cat([x0_t, x0_t])
    return re_inner(d[:B], d[B:]) / x_n[0].numel()


def tweedie_loss(denoiser: Denoiser, batch: MRIBatch, generator: torch.Generator | None = None,
                 sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                 consistency_fraction: float = 0.25, consistency_weight: float = 1.0, t_ratio: float = 2.0,
                 consistency_grad: bool = False, sigma: torch.Tensor | None = None, above: str = "double_tweedie",
                 stein: dict | None = None) -> torch.Tensor:
    """Per-sample loss (B,): EDM-weighted double Tweedie above sigma_n plus the consistency term below it.

    ``sigma`` (B,) fixes the double-Tweedie levels (tests); otherwise EDM log-normal truncated to >= sigma_n.
    ``above='gsure'`` replaces the double-Tweedie term by GSURE on the same batch (``losses.gsure.gsure_loss``
    with ``stein`` options; with a full mask it is SURE on x_n + sqrt(sigma^2 - sigma_n^2) eps, levels >= 1.05
    sigma_n): its weight on the error of D does not vanish at sigma_n as lambda (1 - rho)^2 does.
    Never reads ``batch.target`` (it is stripped here, whatever the caller passes).
    """
    batch = batch.without_target()
    x_n, sigma_n = noisy_image(batch, generator)
    B, dev = x_n.shape[0], x_n.device
    if above == "gsure":
        loss = gsure_loss(denoiser, batch, generator, sigma_data, sigma=sigma, p_mean=p_mean, p_std=p_std,
                          **(stein or {}))
    elif above == "double_tweedie":
        if sigma is None:
            sigma = lognormal_above(sigma_n, generator, p_mean, p_std)
        loss = edm_weight(sigma, sigma_data) * sq_norm(double_tweedie(denoiser, x_n, sigma_n, sigma, generator))
        loss = loss / x_n[0].numel()
    else:
        raise ValueError(f"above must be 'double_tweedie' or 'gsure', got {above!r}")
    if consistency_fraction <= 0 or consistency_weight <= 0:
        return loss
    u = float(torch.rand((), generator=generator, device=dev))
    K = min(B, math.floor(consistency_fraction * B + u))
    if K == 0:
        return loss
    idx = torch.randperm(B, generator=generator, device=dev)[:K]
    sn = sigma_n[idx]
    t = sn * t_ratio ** torch.rand(K, generator=generator, device=dev)
    s = lognormal_below(sn, generator, p_mean, p_std)
    c = consistency(denoiser, x_n[idx], sn, t, s, generator, consistency_grad)
    extra = torch.zeros_like(loss).index_add(0, idx, edm_weight(s, sigma_data) * c)
    return loss + (consistency_weight / consistency_fraction) * extra
