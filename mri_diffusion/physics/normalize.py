"""Per-slice scale from measured data only (no clean image): a percentile of the ACS image.

Diffusion-MRI practice (utcsilab/gsure-diffusion-mri): divide k-space by the 99th percentile of the
RSS image built from the fully sampled centre (ACS) lines alone, so images are ~O(1) whatever the
scanner's absolute scale (fastMRI stores values ~1e-4).
"""

from __future__ import annotations

import torch

from .coils import rss
from .fft import ifft2c
from .masks import acs_lines
from .views import centre_slices


def acs_scale(kspace: torch.Tensor, mask: torch.Tensor, percentile: float = 99.0, min_lines: int = 4,
              width: int | None = None) -> float:
    """kspace (C, H, W) masked; mask (1, 1, W). Returns the scale (> 0) or raises on an all-zero slice.

    ``width``: use this many centre columns instead of the mask's ACS (views: the ACS width of the
    full-resolution scans, so that a view and the full scan share one scale up to the view's amplitude
    factor, see ``data_prep.prepare``).
    """
    W = kspace.shape[-1]
    n = (acs_lines(mask) if mask.shape[-2] == 1 else 0) if width is None else int(width)
    n = max(n, min_lines)
    keep = torch.zeros(W, dtype=kspace.real.dtype, device=kspace.device)
    keep[centre_slices(W, min(n, W))] = 1
    img = rss(ifft2c(kspace * keep))
    s = float(torch.quantile(img.flatten().float(), percentile / 100.0))
    if not s > 0:
        raise ValueError("all-zero slice: cannot normalise (ACS image is zero)")
    return s
