"""SENSE forward model A = M F S as composable operators (Pruessmann et al. 1999).

Shapes (see ``mri_diffusion.types``): image x (B, H, W) complex64; coil maps S (B, C, H, W) complex64;
k-space y (B, C, H, W) complex64 with zeros off the mask; mask M (B, 1, 1, W) or (B, 1, H, W) float32.
Single-coil data is the special case C = 1 with S = 1.
"""

from __future__ import annotations

import torch

from .fft import fft1, fft2c, fftshift, ifft1, ifft2c, ifftshift
from .linop import Compose, LinearOp


class FFT2c(LinearOp):
    """Centred unitary 2-D FFT over the last two dims (adjoint = inverse)."""

    def forward(self, x):
        return fft2c(x)

    def adjoint(self, y):
        return ifft2c(y)


class Multiply(LinearOp):
    """Element-wise multiplication by a fixed (broadcastable) tensor w; adjoint multiplies by conj(w)."""

    def __init__(self, w: torch.Tensor):
        self.w = w

    def forward(self, x):
        return x * self.w

    def adjoint(self, y):
        return y * (self.w.conj() if torch.is_complex(self.w) else self.w)


class CoilMaps(LinearOp):
    """x (B, H, W) -> S x (B, C, H, W); adjoint sums conj(S_c) y_c over coils."""

    def __init__(self, maps: torch.Tensor):
        if maps.ndim != 4 or not torch.is_complex(maps):
            raise ValueError(f"coil maps must be complex (B, C, H, W), got {maps.dtype} {tuple(maps.shape)}")
        self.maps = maps

    def forward(self, x):
        return self.maps * x.unsqueeze(-3)

    def adjoint(self, y):
        return torch.sum(self.maps.conj() * y, dim=-3)


class CartesianMask(LinearOp):
    """Multiplication by a 0/1 sampling mask (B, 1, 1, W) or (B, 1, H, W): self-adjoint and idempotent."""

    def __init__(self, mask: torch.Tensor):
        if mask.ndim != 4:
            raise ValueError(f"mask must be (B, 1, 1, W) or (B, 1, H, W), got shape {tuple(mask.shape)}")
        self.mask = mask

    def forward(self, x):
        return x * self.mask

    adjoint = forward


class Sense(Compose):
    """A = M F S. ``Sense(maps, mask)``; ``maps=None`` means single-coil (S = 1, C = 1)."""

    def __init__(self, maps: torch.Tensor | None, mask: torch.Tensor, image_shape: tuple[int, int] | None = None):
        if maps is None:
            if image_shape is None:
                raise ValueError("single-coil Sense needs image_shape (H, W)")
            maps = torch.ones((mask.shape[0], 1, *image_shape), dtype=torch.complex64, device=mask.device)
        self.maps, self.mask = maps, mask
        self._shifted = None  # (ifftshift_W(maps), ifftshift_W(mask)), made by the first ``normal`` call
        super().__init__([CartesianMask(mask), FFT2c(), CoilMaps(maps)])

    @property
    def num_coils(self) -> int:
        return self.maps.shape[-3]

    def normal(self, x):
        """A^H A x. For 1-D Cartesian masks (B, 1, 1, W) the readout FFT cancels: F^H M F = I_H (x) F_W^H M_W F_W,
        so only 1-D FFTs along W are needed (half the FFT work of the 2-D path; CG spends its time here).
        The centring shifts are folded into cached copies of the maps and mask (ifftshift commutes with
        element-wise products), so the coil-sized tensors are never shifted:
        A^H A x = fftshift_W( sum_c conj(S'_c) F_W^H M' F_W (S'_c ifftshift_W(x)) ), S' = ifftshift_W(S),
        M' = ifftshift_W(M)."""
        if self.mask.shape[-2] != 1:
            return super().normal(x)
        if self._shifted is None:
            self._shifted = (ifftshift(self.maps, dim=-1), ifftshift(self.mask, dim=-1))
        maps, mask = self._shifted
        u = maps * ifftshift(x, dim=-1).unsqueeze(-3)
        z = ifft1(fft1(u, dim=-1) * mask, dim=-1)
        return fftshift(torch.linalg.vecdot(maps.to(z.dtype), z, dim=-3), dim=-1)
