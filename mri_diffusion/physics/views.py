"""Views of an image: linear partial isometries V with V V^H = I.

``LowResView``: the image seen through the centre of its k-space. V = F_m^H C F_n, where C crops the
centred k-space from (H, W) to (h, w). Because C C^H = I and both FFTs are unitary, V V^H = I, so white
noise of level sigma in the full image stays white with level sigma in the view
(V (x + sigma n) = V x + sigma n'). Smooth image amplitudes grow by sqrt(H W / (h w)): the view keeps
the energy of the low frequencies on fewer pixels (ortho FFTs).
"""

from __future__ import annotations

import torch

from .fft import fft2c, ifft2c
from .linop import LinearOp


def centre_slices(full: int, part: int) -> slice:
    """Index of the centred block of length ``part`` in an axis of length ``full`` (fftshift-consistent)."""
    if not 0 < part <= full:
        raise ValueError(f"crop size {part} must be in 1..{full}")
    start = full // 2 - part // 2
    return slice(start, start + part)


def centre_crop(x, shape: tuple[int, int]):
    """The centred block (..., h, w) of an array or tensor (..., H, W), fftshift-consistent (``centre_slices``):
    the k-space centre of a view, the fastMRI reconstruction size of an image. (The evaluation crop,
    ``recon.metrics.center_crop``, uses fastmri's own offsets, (H - h) // 2, which differ when H and h differ in
    parity.)"""
    return x[..., centre_slices(x.shape[-2], shape[0]), centre_slices(x.shape[-1], shape[1])]


class LowResView(LinearOp):
    """Image (..., H, W) -> low-resolution image (..., h, w) through the k-space centre crop."""

    def __init__(self, full_shape: tuple[int, int], view_shape: tuple[int, int]):
        (H, W), (h, w) = full_shape, view_shape
        if not (0 < h <= H and 0 < w <= W):
            raise ValueError(f"LowResView: view {tuple(view_shape)} must fit inside {tuple(full_shape)}")
        self.full_shape, self.view_shape = (int(H), int(W)), (int(h), int(w))
        self._rows, self._cols = centre_slices(H, h), centre_slices(W, w)

    @classmethod
    def from_fraction(cls, full_shape: tuple[int, int], fraction: float) -> "LowResView":
        H, W = full_shape
        return cls(full_shape, (max(1, round(H * fraction)), max(1, round(W * fraction))))

    def crop_kspace(self, k: torch.Tensor) -> torch.Tensor:
        return k[..., self._rows, self._cols]

    def pad_kspace(self, k: torch.Tensor) -> torch.Tensor:
        out = k.new_zeros((*k.shape[:-2], *self.full_shape))
        out[..., self._rows, self._cols] = k
        return out

    def forward(self, x):
        if tuple(x.shape[-2:]) != self.full_shape:
            raise ValueError(f"LowResView expects (..., {self.full_shape}), got {tuple(x.shape)}")
        return ifft2c(self.crop_kspace(fft2c(x)))

    def adjoint(self, y):
        if tuple(y.shape[-2:]) != self.view_shape:
            raise ValueError(f"LowResView.H expects (..., {self.view_shape}), got {tuple(y.shape)}")
        return ifft2c(self.pad_kspace(fft2c(y)))

    def kspace_support(self, device=None) -> torch.Tensor:
        """(H, W) float mask of the k-space entries the view sees: V^H V = F^H diag(support) F."""
        m = torch.zeros(self.full_shape, device=device)
        m[self._rows, self._cols] = 1
        return m

    def __repr__(self) -> str:
        return f"LowResView({self.full_shape} -> {self.view_shape})"

    @property
    def amplitude_scale(self) -> float:
        """Factor sqrt(H W / (h w)) by which smooth (band-limited) image amplitudes grow in the view."""
        return (self.full_shape[0] * self.full_shape[1] / (self.view_shape[0] * self.view_shape[1])) ** 0.5


# --------------------------------------------------------------------------------------------------
# View specifications: what a view is, independent of the matrix size it is applied to.

VIEW_KINDS = ("lowres", "acs")


def view_shape_for(full_shape: tuple[int, int], fraction: tuple[float, float]) -> tuple[int, int]:
    """The view's matrix (h, w) = round(fraction * (H, W)), at least 1 and at most (H, W)."""
    return tuple(min(n, max(1, int(round(n * f)))) for n, f in zip(full_shape, fraction))


def parse_view(spec: str) -> tuple[str, float | None]:
    """``'lowres:0.5'`` -> ('lowres', 0.5) (centre 1/2 x 1/2 of k-space); ``'acs'`` -> ('acs', None)
    (all rows x the fully sampled centre columns of each training scan's own mask)."""
    kind, _, arg = str(spec).partition(":")
    if kind not in VIEW_KINDS:
        raise ValueError(f"view {spec!r}: kind must be one of {VIEW_KINDS} (e.g. lowres:0.5 or acs)")
    if kind == "acs":
        if arg:
            raise ValueError(f"view {spec!r}: 'acs' takes no argument (its width is the ACS of each mask)")
        return kind, None
    try:
        f = float(arg)
    except ValueError:
        raise ValueError(f"view {spec!r}: expected lowres:FRACTION with 0 < FRACTION < 1") from None
    if not 0 < f < 1:
        raise ValueError(f"view {spec!r}: fraction must be in (0, 1), got {f}")
    return kind, f


def check_partial_isometry(view: LinearOp, full_shape: tuple[int, int], tol: float = 1e-4,
                           seed: int = 0) -> float:
    """Refuse a view that is not a partial isometry: ||V V^H z - z|| / ||z|| <= tol on random z.

    Returns the measured relative error. Raises ``ValueError`` naming the view otherwise (V V^H = I is what
    makes a view denoiser trained at level sigma valid inside the full model at the same sigma).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.complex(torch.randn(2, *full_shape, generator=g), torch.randn(2, *full_shape, generator=g))
    z = view(x)
    z = torch.complex(torch.randn(z.shape, generator=g), torch.randn(z.shape, generator=g))
    err = float(torch.linalg.vector_norm(view(view.adjoint(z)) - z) / torch.linalg.vector_norm(z))
    if not err <= tol:
        raise ValueError(f"{view!r} is not a partial isometry: ||V V^H z - z|| / ||z|| = {err:.3g} > {tol:g}")
    return err
