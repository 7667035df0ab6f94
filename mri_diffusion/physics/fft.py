"""Centred orthonormal 2-D FFT, the fastMRI convention (``fastmri.fft2c``) on complex tensors.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two dims. Works for odd and even
sizes, any leading batch dims, CPU or CUDA. Unitary: ``ifft2c(fft2c(x)) == x`` and Parseval holds.

The project's only FFTs: every other module transforms through this one. The uncentred 1-D pair and the shifts
(:func:`fft1`, :func:`ifft1`, :func:`fftshift`, :func:`ifftshift`) serve operators that fold the centring shifts
into cached tensors (``Sense.normal``).
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def _check_complex(x: torch.Tensor) -> None:
    if not torch.is_complex(x):
        raise TypeError(f"expected a complex tensor (..., H, W), got dtype {x.dtype} shape {tuple(x.shape)}")


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred unitary 2-D FFT. x: complex (..., H, W) -> complex (..., H, W)."""
    _check_complex(x)
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred unitary inverse 2-D FFT. k: complex (..., H, W) -> complex (..., H, W)."""
    _check_complex(k)
    k = torch.fft.ifftshift(k, dim=_DIMS)
    k = torch.fft.ifft2(k, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_DIMS)


def ifft1c(k: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred unitary inverse 1-D FFT along ``dim`` (e.g. to remove readout oversampling)."""
    _check_complex(k)
    k = torch.fft.ifftshift(k, dim=dim)
    k = torch.fft.ifft(k, dim=dim, norm="ortho")
    return torch.fft.fftshift(k, dim=dim)


def fftshift(x: torch.Tensor, dim: int | tuple[int, ...] = _DIMS) -> torch.Tensor:
    return torch.fft.fftshift(x, dim=dim)


def ifftshift(x: torch.Tensor, dim: int | tuple[int, ...] = _DIMS) -> torch.Tensor:
    return torch.fft.ifftshift(x, dim=dim)


def fft1(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Uncentred unitary 1-D FFT along ``dim`` (no shifts)."""
    _check_complex(x)
    return torch.fft.fft(x, dim=dim, norm="ortho")


def ifft1(k: torch.Tensor, dim: int) -> torch.Tensor:
    """Uncentred unitary inverse 1-D FFT along ``dim`` (no shifts)."""
    _check_complex(k)
    return torch.fft.ifft(k, dim=dim, norm="ortho")


def fft1c(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred unitary 1-D FFT along ``dim``."""
    _check_complex(x)
    x = torch.fft.ifftshift(x, dim=dim)
    x = torch.fft.fft(x, dim=dim, norm="ortho")
    return torch.fft.fftshift(x, dim=dim)
