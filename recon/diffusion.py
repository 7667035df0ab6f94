"""Posterior-sampling reconstruction of one slice with a learned prior D(x, sigma).

K posterior samples per slice run as one batch, and ``batch`` runs several slices x K samples at once
(``mridiff recon --batch-slices``); each sample's noise is seeded by (file, slice, sample index, seed), so
results do not depend on batching. Outputs: the posterior mean (its magnitude is the
reconstruction), the posterior standard deviation sqrt(E|x - mean|^2) (``reconstruction_std``), and
optionally the sample magnitudes (``reconstruction_samples``, (K, H, W) per slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_prep.fastmri_h5 import DataError
from mri_diffusion.physics import Sense

from .pipeline import SliceResult
from .samplers.common import NoiseSource, default_sigmas, derive_seed, get_sampler, network_calls


# Scans with more coils are SVD-compressed to this many virtual coils before posterior sampling by default
# (mridiff recon --virtual-coils auto, the benchmark table): 15 coils x 320^2 spent 51 % of the sampler's time
# outside the network with all coils, 21 % with 8 virtual coils, for -0.10 dB (BENCHMARKS.md, Speed).
DEFAULT_VIRTUAL_COILS = 8


@dataclass
class DiffusionRecon:
    """A ``SliceMethod`` running sampler ``sampler`` with ``steps`` noise levels and ``samples`` draws."""

    denoiser: torch.nn.Module
    sampler: str = "cg"
    steps: int | None = None
    samples: int = 4
    seed: int = 0
    save_samples: bool = False
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.sigmas = default_sigmas(self.sampler, self.steps)
        self.fn = get_sampler(self.sampler)

    @property
    def calls_per_sample(self) -> int:
        return network_calls(self.sampler, len(self.sigmas) - 1, **self.options)

    def __call__(self, k: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, ctx: dict) -> SliceResult:
        return self.batch([(k, mask, maps, ctx)])[0]

    def batch(self, items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]) -> list[SliceResult]:
        """Several slices (same shape) x K samples in one sampler run: batch S * K. Every sample's noise is
        seeded by (file, slice, sample index, seed) and every sampler works per batch element, so the results
        equal slice-by-slice runs (tested)."""
        K, shape = self.samples, items[0][0].shape
        for k, _, _, ctx in items:
            if k.shape != shape:
                raise ValueError(f"{ctx['file']}: slice {ctx['slice']}: k-space {tuple(k.shape)} in a batch of "
                                 f"{tuple(shape)}")
        rep = lambda t: t[None].expand(K, *t.shape)  # noqa: E731
        y = torch.cat([rep(k) for k, _, _, _ in items]).contiguous()
        A = Sense(torch.cat([rep(s) for _, _, s, _ in items]).contiguous(),
                  torch.cat([rep(m) for _, m, _, _ in items]).contiguous())
        noise = NoiseSource([derive_seed(ctx["file"], ctx["slice"], j, self.seed)
                             for _, _, _, ctx in items for j in range(K)])
        noise_std = torch.tensor([float(ctx["noise_std"]) for _, _, _, ctx in items for _ in range(K)],
                                 device=y.device)
        with torch.set_grad_enabled(self.sampler == "dps"):
            x = self.fn(self.denoiser, y, A, self.sigmas.to(y.device), noise=noise, noise_std=noise_std,
                        **self.options)
        x = x.detach()
        out = []
        for n, (_, _, _, ctx) in enumerate(items):
            xs = x[n * K:(n + 1) * K]
            if not torch.all(torch.isfinite(torch.view_as_real(xs))):
                raise DataError(f"{ctx['file']}: slice {ctx['slice']}: a posterior sample contains NaN/Inf; "
                                "nothing written for this file")
            mean = xs.mean(0)
            std = (torch.sqrt(((xs - mean).abs() ** 2).mean(0)) if K > 1
                   else torch.zeros(mean.shape, device=xs.device))
            extra = {"reconstruction_std": std}
            if self.save_samples:
                extra["reconstruction_samples"] = xs.abs()
            out.append(SliceResult(mean, extra))
        return out


def load_prior(checkpoint: str | Path, device: torch.device):
    """(denoiser, config, checkpoint) with EMA weights; ``builtin`` is reserved for the shipped prior."""
    from mri_diffusion.train import load_denoiser

    net, cfg, ck = load_denoiser(checkpoint, use_ema=True, device=device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, cfg, ck
