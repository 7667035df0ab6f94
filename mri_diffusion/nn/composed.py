"""A full-image denoiser composed of frozen *view* denoisers plus a learned residual score
(Bootstrapping Diffusion, X. Ma 2025, brought to Cartesian MRI).

For views V_v that are centred k-space crops (``LowResView``; the low-resolution and the ACS views are
both of this kind), V_v^H V_v = F^H diag(s_v) F with s_v the view's k-space support. Overlapping views
are combined by a partition of unity on k-space, w_v = s_v / max(1, sum_u s_u), so that

    D(x, sigma) = sum_v V_v^H W_v D_v(V_v x, sigma) + (I - sum_v V_v^H W_v V_v) x + sigma^2 r_theta(x, sigma)

with W_v = V_v F^H diag(w_v) F V_v^H (the weights restricted to the view). For one view (or disjoint views)
this is exactly  V^H D_v(V x) + (I - V^H V) x + sigma^2 r. Where no view sees k-space the composed
denoiser is the identity plus the residual (no prior but the residual's there). Because V V^H = I,
V (x0 + sigma n) = V x0 + sigma n' with n' white, so a view model trained at level sigma is used at the same
sigma (``check_partial_isometry`` refuses anything else at construction).

The residual is EDM-preconditioned like ``EDMDenoiser``: sigma^2 r_theta(x, sigma) = c_out(sigma)
F_theta(c_in(sigma) x, c_noise(sigma)), F_theta a U-Net whose last layer starts at zero (so training starts
from "views alone"). Regulariser (``residual_penalty``): the per-pixel mean of |F_theta|^2, which equals
lambda_EDM(sigma) ||sigma^2 r||^2 / npix, i.e. the residual's contribution to D measured in the same
EDM-weighted units as the denoising loss it is added to.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..physics.fft import fft2c, ifft2c
from ..physics.views import LowResView, check_partial_isometry, view_shape_for
from .precond import EDMDenoiser, preconditioned
from .unet import NetConfig, UNet


class ResidualScore(nn.Module):
    """sigma^2 r_theta(x, sigma) = c_out(sigma) F_theta(c_in x, c_noise): complex (B, H, W) -> (B, H, W)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.sigma_data = cfg.sigma_data
        self.net = UNet(cfg)
        self._records: list | None = None

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        _, c_out, f = preconditioned(self.net, x, sigma, self.sigma_data)
        if self._records is not None:
            self._records.append((f.abs() ** 2).reshape(f.shape[0], -1).mean(1))
        return c_out * f


class ViewComposedDenoiser(nn.Module):
    """D(x, sigma) from frozen view denoisers and a residual (see module docstring).

    views: list of (name, fraction (fh, fw) of the full matrix, EDMDenoiser). The view of an (H, W) input
    is the centred (round(fh H), round(fw W)) k-space block, so the composed model runs on any matrix size
    like the plain U-Net does. ``residual``: a ``NetConfig`` for r_theta, or None (views alone).
    ``full_shape``: the training matrix, where every view is checked to be a partial isometry.
    """

    def __init__(self, views: list[tuple[str, tuple[float, float], EDMDenoiser]], residual: NetConfig | None,
                 full_shape: tuple[int, int]):
        super().__init__()
        if not views:
            raise ValueError("ViewComposedDenoiser needs at least one view")
        self.names = [n for n, _, _ in views]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"view names must be unique, got {self.names}")
        self.fractions = {n: (float(f[0]), float(f[1])) for n, f, _ in views}
        self.views = nn.ModuleDict({n: d for n, _, d in views})
        for p in self.views.parameters():
            p.requires_grad_(False)
        self.residual = ResidualScore(residual) if residual is not None else None
        self.full_shape = tuple(int(v) for v in full_shape)
        self.sigma_data = residual.sigma_data if residual is not None else views[0][2].sigma_data
        for n in self.names:
            check_partial_isometry(self.view_op(n, self.full_shape), self.full_shape)

    def train(self, mode: bool = True):
        super().train(mode)
        self.views.eval()  # frozen: never in training mode (dropout off)
        return self

    def view_op(self, name: str, shape: tuple[int, int]) -> LowResView:
        return LowResView(tuple(shape), view_shape_for(tuple(shape), self.fractions[name]))

    def weights(self, shape: tuple[int, int], device) -> dict[str, torch.Tensor]:
        """Partition-of-unity k-space weights w_v (H, W) of each view for an (H, W) image."""
        sup = {n: self.view_op(n, shape).kspace_support(device) for n in self.names}
        count = torch.stack(list(sup.values())).sum(0).clamp_min(1.0)
        return {n: s / count for n, s in sup.items()}

    def _sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, device=x.device).to(x.real.dtype).reshape(-1)
        return s.expand(x.shape[0]) if s.numel() == 1 else s

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if not torch.is_complex(x) or x.ndim != 3:
            raise TypeError(f"ViewComposedDenoiser expects complex (B, H, W), got {x.dtype} {tuple(x.shape)}")
        sigma = self._sigma(sigma, x)
        shape = tuple(x.shape[-2:])
        X = fft2c(x)
        out = X
        for n, w in self.weights(shape, x.device).items():
            V = self.view_op(n, shape)
            Xv = V.crop_kspace(X)
            dv = self.views[n](ifft2c(Xv), sigma)
            out = out + V.pad_kspace(V.crop_kspace(w) * (fft2c(dv) - Xv))
        d = ifft2c(out)
        if self.residual is not None:
            d = d + self.residual(x, sigma)
        return d

    @contextmanager
    def recording(self):
        """Collect the residual's per-sample penalty mean|F_theta|^2 of every call made inside the block."""
        if self.residual is None:
            yield []
            return
        self.residual._records = []
        try:
            yield self.residual._records
        finally:
            self.residual._records = None
