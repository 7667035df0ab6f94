"""EDM preconditioning (Karras et al. 2022, Table 1 / Eq. 7) around the complex-image U-Net.

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

Noise convention: ``sigma`` is the noise std **per real channel**: x_sigma = x0 + sigma * n where n has
i.i.d. N(0, 1) real and imaginary parts (so E|sigma n|^2 = 2 sigma^2 per complex pixel).  ``sigma_data`` is
the clean-image std per real channel in the same sense.  With this convention Tweedie gives the score of the
density of (Re x, Im x) as (D(x, sigma) - x) / sigma^2, which is what ``mri_diffusion.types.score`` computes.
(Measurement noise CN(0, s^2) in k-space, as described in types.py, corresponds to sigma = s / sqrt(2).)

Complex <-> real channels happens only here, through ``to_channels`` / ``from_channels``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..physics.complex import from_channels, to_channels
from .unet import PRESETS, NetConfig, UNet

__all__ = ["EDMDenoiser", "build_denoiser", "count_parameters", "edm_coefficients", "preconditioned"]


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) for a real tensor ``sigma`` (any shape, same shape out).

    ``c_noise`` uses ``sigma`` clamped to >= 1e-20 so that sigma = 0 gives finite features (c_out = 0 there,
    hence D(x, 0) = x exactly).
    """
    sd2 = sigma_data ** 2
    s2 = sigma * sigma
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data * torch.rsqrt(s2 + sd2)
    c_in = torch.rsqrt(s2 + sd2)
    c_noise = torch.log(sigma.clamp_min(1e-20)) / 4
    return c_skip, c_out, c_in, c_noise


def preconditioned(net: UNet, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, F) with F = F_theta(c_in x, c_noise), each broadcastable to x (B, H, W) complex.

    The one place where the complex image meets the real-channel network: ``EDMDenoiser`` returns
    c_skip x + c_out F, the residual score of view-composed priors (``nn.composed``) c_out F. sigma: (B,).
    """
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1) for c in edm_coefficients(sigma, sigma_data))
    inp = to_channels(c_in * x)
    wdtype = net.conv_in.weight.dtype
    if inp.dtype != wdtype:
        inp = inp.to(wdtype)
    f = from_channels(net(inp, c_noise.reshape(-1))).to(x.dtype)
    return c_skip, c_out, f


class EDMDenoiser(nn.Module):
    """D(x, sigma) ~ E[x0 | x]: complex64 (B, H, W) x (B,) sigma -> complex64 (B, H, W).

    ``sigma`` may be a (B,) tensor, a python float, a 0-dim or 1-element tensor (broadcast to B), or any
    tensor with B elements.  It is the per-real-channel noise std (see module docstring) and must be >= 0.

    Differentiable in ``x`` with ``torch.autograd`` (incl. double backward), ``torch.autograd.functional.jvp``
    and ``torch.func.jvp`` / ``torch.func.vjp`` (no in-place ops, no fused attention kernels).
    The preconditioning is done in float32; the inner network follows its parameter dtype / autocast.
    """

    def __init__(self, cfg: NetConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else NetConfig()
        self.sigma_data = self.cfg.sigma_data
        self.net = UNet(self.cfg)

    def _sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        s = torch.as_tensor(sigma, device=x.device)
        s = s.to(x.real.dtype).reshape(-1)
        if s.numel() == 1:
            s = s.expand(b)
        elif s.numel() != b:
            raise ValueError(f"sigma must have 1 or B={b} elements, got shape {tuple(torch.as_tensor(sigma).shape)}")
        return s

    def coefficients(self, sigma, x: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise), each (B,), for this denoiser's sigma_data."""
        return edm_coefficients(self._sigma(sigma, x), self.sigma_data)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM loss weight lambda(sigma) = 1 / c_out^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
        sd2 = self.sigma_data ** 2
        return (sigma ** 2 + sd2) / (sigma ** 2 * sd2)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if not torch.is_complex(x) or x.ndim != 3:
            raise TypeError(f"EDMDenoiser expects complex (B, H, W), got {x.dtype} {tuple(x.shape)}")
        c_skip, c_out, f = preconditioned(self.net, x, self._sigma(sigma, x), self.sigma_data)
        return c_skip * x + c_out * f

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}"


def build_denoiser(spec: NetConfig | dict | str | None = None, device: torch.device | str | None = None
                   ) -> EDMDenoiser:
    """EDMDenoiser from a NetConfig, a dict (``NetConfig.from_dict``; may contain ``"preset"``),
    a preset name (``"tiny"``, ``"small"``, ``"research"``) or ``None`` (NetConfig defaults)."""
    if spec is None:
        cfg = NetConfig()
    elif isinstance(spec, NetConfig):
        cfg = spec
    elif isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown net preset {spec!r}; choose from {sorted(PRESETS)}")
        cfg = PRESETS[spec]
    elif isinstance(spec, dict):
        cfg = NetConfig.from_dict(spec)
    else:
        raise TypeError(f"build_denoiser expects NetConfig, dict, preset name or None, got {type(spec).__name__}")
    model = EDMDenoiser(cfg)
    return model if device is None else model.to(device)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on meta-device modules too)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
