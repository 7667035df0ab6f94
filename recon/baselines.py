"""Classical reconstructions of one slice: zero-filled RSS, CG-SENSE (torch), L1-wavelet (sigpy).

Inputs: masked k-space (C, H, W) complex64 (zeros off the mask), mask (1, 1, W) or (1, H, W) float32,
coil maps (C, H, W) complex64. Outputs are complex images (H, W) (zero-filled: the magnitude RSS image).
Callers normalise k-space first (``recon.pipeline`` divides by a per-slice scale) so that the
regularisation weights mean the same thing on every scan (sigpy issue #23: lambda scales with data).
"""

from __future__ import annotations

import numpy as np
import torch

from mri_diffusion.physics import Sense, pinv
from mri_diffusion.physics.coils import rss
from mri_diffusion.physics.fft import ifft2c


def zero_filled(kspace: torch.Tensor) -> torch.Tensor:
    """RSS of the coil images of the zero-filled k-space (the fastMRI zero-filled baseline). -> (H, W) real."""
    return rss(ifft2c(kspace))


def cg_sense(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, iters: int = 30, lam: float = 0.0,
             tol: float = 1e-6) -> torch.Tensor:
    """CG-SENSE: argmin_x ||M F S x - y||^2 + lam ||x||^2 by conjugate gradient. -> complex (H, W)."""
    A = Sense(maps[None], mask[None])
    return pinv(A, kspace[None], max_iter=iters, tol=tol, lam=lam)[0]


def l1_wavelet(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, lam: float = 1e-3,
               iters: int = 100, wavelet: str = "db4") -> torch.Tensor:
    """sigpy.mri.app.L1WaveletRecon: argmin_x 1/2 ||M F S x - y||^2 + lam ||W x||_1. -> complex (H, W)."""
    import sigpy.mri.app

    y = kspace.detach().cpu().numpy().astype(np.complex64)
    mps = maps.detach().cpu().numpy().astype(np.complex64)
    w = np.broadcast_to(mask.detach().cpu().numpy().astype(np.float32).reshape(mask.shape[-2:]), y.shape[-2:])
    # sigpy estimates the step size by a power iteration (MaxEig) that starts from numpy's global random state:
    # seed it (and restore the caller's state) so that the same input gives the same reconstruction every run
    state = np.random.get_state()
    np.random.seed(0)
    try:
        app = sigpy.mri.app.L1WaveletRecon(y, mps, lam, weights=w.copy(),
                                           wave_name=wavelet, max_iter=iters, show_pbar=False)
        x = np.asarray(app.run())
    finally:
        np.random.set_state(state)
    return torch.from_numpy(x.astype(np.complex64)).to(kspace.device)


METHODS = ("zero-filled", "sense", "l1-wavelet")
