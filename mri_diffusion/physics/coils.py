"""Coil-sensitivity estimation: batched ESPIRiT in torch (Uecker et al., MRM 71:990-1001, 2014).

``espirit`` follows ``sigpy.mri.app.EspiritCalib`` (same algorithm, same parameter meaning, one set of maps)
but is batched over slices, runs on whatever device the k-space lives on, and is much faster:

1. Calibration matrix of all ``kernel_width^2 x C`` patches of the centred calibration region; its right
   singular vectors with singular value > ``thresh * max`` span the signal subspace (computed from the
   Gram matrix in float64, so only the projector onto that subspace matters, never the SVD's phases).
2. The per-pixel ``C x C`` operator ``AHA(p) = sum_k v_k(p) v_k(p)^H`` (``v_k`` = zero-padded image-domain
   kernel ``k``) is a trigonometric polynomial of degree ``kernel_width - 1`` in each direction. We form its
   ``(2 kw - 1)^2`` Fourier coefficients once (a correlation of the kernels in k-space) and evaluate it on
   the image grid with two small DFT matmuls, instead of ``num_kernels`` full-size FFTs.
3. The dominant eigenvector per pixel by the same power method as sigpy (start at all-ones, ``max_iter``
   applications of ``AHA``), but evaluated by exponentiation by squaring: ``AHA^(2^j)`` for j <= k by
   batched C x C matmuls (trace-normalised: only directions matter, and entries stay in range), then
   ``x = AHA^(max_iter - 1) 1`` with ``(max_iter - 1) >> k`` + popcount(low bits) batched mat-vecs (k ~ 4
   for max_iter = 100, chosen by a cost model), and one last mat-vec for the eigenvalue ``||AHA x||``. In
   exact arithmetic this is identical to sigpy's iterate (also where the iteration has not converged),
   for ~4 squarings + ~9 mat-vecs instead of 100 mat-vecs.
4. Phase normalised to coil 0 and cropped where the eigenvalue <= ``crop``, as sigpy does.

Pixels are processed in row blocks, so memory stays bounded for large images and batches. Per block the
work is a handful of small batched ops; on small, shared CPUs (e.g. 2 vCPUs with noisy neighbours)
``torch.set_num_threads(1)`` can be faster than the default, see ``benchmarks/espirit.py``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["espirit", "espirit_operator", "rss", "normalize_maps"]

def rss(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares over the coil dim: sqrt(sum_c |x_c|^2). Real output (float32 for complex64 input).
    The one RSS of the project (ACS scale, zero-filled baseline, prepared and simulated targets)."""
    return torch.sqrt(torch.sum(torch.abs(x) ** 2, dim=dim))


def normalize_maps(maps: torch.Tensor, dim: int = -3, eps: float = 0.0) -> torch.Tensor:
    """Scale coil maps so that sum_c |S_c|^2 = 1 at every pixel where they are non-zero (zeros stay zero)."""
    norm = rss(maps, dim=dim).unsqueeze(dim)
    safe = torch.where(norm > eps, norm, torch.ones_like(norm))
    return torch.where(norm > eps, maps / safe, torch.zeros_like(maps))


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def conj_phase(ref: torch.Tensor) -> torch.Tensor:
    """conj(ref) / |ref| (1 where ref = 0): multiplying maps by it makes ``ref`` their phase reference."""
    mag = ref.abs()
    return torch.where(mag > 0, ref.conj() / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.ones_like(ref))


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        out = (int(v[0]), int(v[1]))
    else:
        out = (int(v), int(v))
    if min(out) < 1:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return out


def _centre_resize(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centred crop / zero-pad of the last len(shape) dims, with sigpy.util.resize's centre convention."""
    nd = len(shape)
    ishape = x.shape[-nd:]
    if tuple(ishape) == tuple(shape):
        return x
    out = x.new_zeros(x.shape[:-nd] + tuple(shape))
    isl, osl = [], []
    for i, o in zip(ishape, shape):
        si, so = max(i // 2 - o // 2, 0), max(o // 2 - i // 2, 0)
        c = min(i - si, o - so)
        isl.append(slice(si, si + c))
        osl.append(slice(so, so + c))
    out[(Ellipsis, *osl)] = x[(Ellipsis, *isl)]
    return out


def _calibration_matrix(calib: torch.Tensor, kw: tuple[int, int]) -> torch.Tensor:
    """calib (B, C, h, w) -> (B, num_patches, C * kw0 * kw1), columns ordered (coil, ky, kx) like sigpy."""
    B, C = calib.shape[:2]
    p = calib.unfold(-2, kw[0], 1).unfold(-2, kw[1], 1)  # (B, C, nh, nw, kw0, kw1)
    p = p.permute(0, 2, 3, 1, 4, 5)  # (B, nh, nw, C, kw0, kw1)
    return p.reshape(B, -1, C * kw[0] * kw[1])


def _signal_projector(mat: torch.Tensor, thresh: float) -> torch.Tensor:
    """Projector onto the right singular vectors of ``mat`` with singular value > thresh * max.

    mat (B, n, m) -> P (B, m, m) complex128, P = V_sel V_sel^H. The kept kernels of sigpy are the rows of
    VH = V^H, and everything downstream depends on them only through sum_k VH[k,i] conj(VH[k,j]) = conj(P).
    """
    n, m = mat.shape[-2:]
    mat = mat.to(torch.complex128)
    if m <= n:
        gram = mat.mH @ mat  # (m, m) = V S^2 V^H
    else:
        gram = mat @ mat.mH  # (n, n) = U S^2 U^H, smaller: fewer patches than columns
    gram = 0.5 * (gram + gram.mH)
    ev, vec = torch.linalg.eigh(gram)  # ascending; ev = singular values squared
    ev = ev.clamp_min(0)
    keep = ev > (thresh**2) * ev[..., -1:]  # S > thresh * S.max  <=>  S^2 > thresh^2 * S.max^2
    if m <= n:
        Vs = vec * keep.unsqueeze(-2).to(vec.dtype)
    else:  # V_sel = mat^H U_sel S_sel^-1
        w = torch.where(keep, ev.clamp_min(torch.finfo(ev.dtype).tiny).rsqrt(), torch.zeros_like(ev))
        Vs = mat.mH @ (vec * w.unsqueeze(-2).to(vec.dtype))
    return Vs @ Vs.mH


def _kernel_correlation(P: torch.Tensor, C: int, kw: tuple[int, int]) -> torch.Tensor:
    """Fourier coefficients of AHA: G[b, c, c', d0, d1] = sum_{x - y = d} Q[b, (c, x), (c', y)], Q = conj(P).

    Returns complex128 (B, C, C, 2 kw0 - 1, 2 kw1 - 1); index d corresponds to shift d - (kw - 1).
    """
    B = P.shape[0]
    Q = P.conj().reshape(B, C, kw[0], kw[1], C, kw[0], kw[1])
    Ds = []
    for k in kw:
        i = torch.arange(k, device=P.device)
        d = i[:, None] - i[None, :] + k - 1  # (x, y) -> shift index
        D = d.unsqueeze(-1) == torch.arange(2 * k - 1, device=P.device)  # one-hot (k, k, 2k - 1)
        Ds.append(D.to(P.dtype))
    # sum over x0, y0 with x0 - y0 fixed, then over x1, y1
    G = torch.einsum("bcxyCuv,xud->bcCdyv", Q, Ds[0])
    G = torch.einsum("bcCdyv,yve->bcCde", G, Ds[1])
    return G


def _dft_rows(n: int, k: int, device, dtype=torch.complex64) -> torch.Tensor:
    """E[d, p] = exp(2 pi i (d - (k - 1)) (p - n // 2) / n): evaluates a centred zero-padded ifft at pixel p."""
    d = torch.arange(2 * k - 1, dtype=torch.float64, device=device) - (k - 1)
    p = torch.arange(n, dtype=torch.float64, device=device) - n // 2
    ang = (2 * math.pi / n) * torch.remainder(d[:, None] * p[None, :], n)
    return torch.polar(torch.ones_like(ang), ang).to(dtype)


@torch.no_grad()
def espirit_operator(
    kspace: torch.Tensor,
    calib_width: int | tuple[int, int] = 24,
    thresh: float = 0.02,
    kernel_width: int | tuple[int, int] = 6,
    calib_mask_width: int | None = None,
) -> torch.Tensor:
    """Fourier coefficients G (B, C, C, 2kw0-1, 2kw1-1) complex64 of the ESPIRiT operator, scaled so that
    AHA(p) = sum_d G[..., d] E0[d0, p0] E1[d1, p1] (see ``_dft_rows``). Exposed for testing / reuse."""
    if kspace.ndim != 4 or not torch.is_complex(kspace):
        raise ValueError(f"kspace must be complex (B, C, H, W), got {kspace.dtype} {tuple(kspace.shape)}")
    kspace = kspace.to(torch.complex64)
    B, C, H, W = kspace.shape
    cw = list(_pair(calib_width, "calib_width"))
    if calib_mask_width is not None:
        cw[1] = min(cw[1], int(calib_mask_width))
    kw = _pair(kernel_width, "kernel_width")
    calib = _centre_resize(kspace, cw)
    if calib.shape[-2] < kw[0] or calib.shape[-1] < kw[1]:
        raise ValueError(f"calibration region {tuple(calib.shape[-2:])} smaller than kernel {kw}")
    mat = _calibration_matrix(calib, kw)
    P = _signal_projector(mat, thresh)
    G = _kernel_correlation(P, C, kw)
    # sigpy: AHA = N / kw^2 * sum_k ifft(k)(p) ifft(k)(p)^H with ortho FFTs -> 1/kw^2 * sum_d G[d] e^{...}
    return (G / (kw[0] * kw[1])).to(torch.complex64)


def _plan_powers(n: int, sq_cost: float = 3.0) -> int:
    """Number of squarings k minimising the cost of A^n 1 = (A^(2^k))^(n >> k) * prod_j (A^(2^j))^(bit j)."""
    best, best_k = None, 0
    for k in range(0, max(1, n.bit_length())):
        cost = k * sq_cost + (n >> k) + bin(n & ((1 << k) - 1)).count("1")
        if best is None or cost < best:
            best, best_k = cost, k
    return best_k


def _normalize_(x: torch.Tensor, tiny: float) -> torch.Tensor:
    """In place: x (N, C, 1) complex -> x / ||x|| per pixel (real arithmetic; complex norm/div are slow on CPU)."""
    xr = torch.view_as_real(x)  # (N, C, 1, 2)
    nrm2 = xr.square().sum(dim=(-3, -1), keepdim=True)  # (N, 1, 1, 1)
    xr.mul_(nrm2.clamp_min(tiny).rsqrt())
    return x


def _power_method(A: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sigpy's PowerMethod on A (N, C, C) Hermitian PSD: x0 = ones, max_iter iterations.

    Returns (x (N, C) unit norm, eig (N,) = ||A x_{max_iter-1}||). A^(max_iter-1) 1 is evaluated by k
    squarings A^(2^j) (each rescaled by its trace: only directions matter, and this keeps the entries in
    range) and one mat-vec per set bit / per application of the largest power.
    """
    N, C, _ = A.shape
    tiny = torch.finfo(A.real.dtype).tiny
    x = torch.ones(N, C, 1, dtype=A.dtype, device=A.device)
    n = max_iter - 1
    k = _plan_powers(n) if n > 0 else 0
    Ak = A
    for j in range(k + 1):
        reps = (n >> j) if j == k else (n >> j) & 1
        for _ in range(reps):
            x = _normalize_(Ak @ x, tiny)
        if j < k:
            Ak = Ak @ Ak
            tr = torch.diagonal(Ak, dim1=-2, dim2=-1).real.sum(-1)
            torch.view_as_real(Ak).mul_((1.0 / tr.clamp_min(tiny))[:, None, None, None])
    y = A @ x
    eig = torch.view_as_real(y).square().sum(dim=(-3, -1)).sqrt()  # (N, 1)
    torch.view_as_real(y).mul_((1.0 / eig.clamp_min(tiny))[:, :, None, None])
    return y[..., 0], eig[:, 0]


@torch.no_grad()
def espirit(
    kspace: torch.Tensor,
    calib_width: int | tuple[int, int] = 24,
    thresh: float = 0.02,
    kernel_width: int | tuple[int, int] = 6,
    crop: float = 0.95,
    max_iter: int = 100,
    calib_mask_width: int | None = None,
    *,
    output_eigenvalue: bool = False,
    chunk_pixels: int | None = None,
):
    """ESPIRiT coil maps, batched over slices; matches ``sigpy.mri.app.EspiritCalib(ksp_b, ...).run()``.

    Args:
        kspace: (B, C, H, W) complex, centred k-space (fully or partially sampled, calibration region
            fully sampled). Any device; computation stays there.
        calib_width: side of the centred square calibration region, or (h, w) for a rectangle (e.g.
            (H, num_acs_lines) for fastMRI 1-D undersampling).
        thresh: keep singular vectors of the calibration matrix with value > thresh * max.
        kernel_width: kernel side (int, or (h, w)).
        crop: maps are zeroed where the dominant eigenvalue <= crop.
        max_iter: power-method iterations (as sigpy; computed by repeated squaring, see module doc).
        calib_mask_width: optional width (along W) of the fully-sampled ACS band; if given, the
            calibration region's W extent is limited to it so that no kernel sees unacquired columns.
        output_eigenvalue: also return the dominant eigenvalue map (B, H, W) float32.
        chunk_pixels: pixels per block of the per-pixel eigenproblem (default: ~8 MiB of C x C operators
            per CPU thread, up to 4 threads; ~256 MiB on GPU). Only affects speed and memory, not the result.

    Returns:
        maps (B, C, H, W) complex64 (unit norm over coils on the support, phase relative to coil 0),
        and (B, H, W) eigenvalues if ``output_eigenvalue``.
    """
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    G = espirit_operator(kspace, calib_width, thresh, kernel_width, calib_mask_width)
    B, C, H, W = kspace.shape
    dev = kspace.device
    kw = _pair(kernel_width, "kernel_width")
    E0 = _dft_rows(H, kw[0], dev)  # (2kw0-1, H)
    E1 = _dft_rows(W, kw[1], dev)  # (2kw1-1, W)
    # T[b, d0, (w, c, c')] = sum_d1 G[b, c, c', d0, d1] E1[d1, w]; then AHA rows = E0[:, rows]^T @ T[b]
    T = torch.einsum("bcCde,ew->bdwcC", G, E1).reshape(B, 2 * kw[0] - 1, W * C * C)
    E0t = E0.T.contiguous()  # (H, 2kw0-1)

    if chunk_pixels is None:
        bytes_per_px = 8 * C * C  # one complex64 C x C operator
        if dev.type == "cpu":  # ~8 MiB of operators per thread (cache-sized blocks; ~4.6k px for C = 15)
            chunk_pixels = max(256, (1 << 23) // bytes_per_px) * max(1, min(torch.get_num_threads(), 4))
        else:  # ~256 MiB of operators per block
            chunk_pixels = max(4096, (1 << 28) // bytes_per_px)
    rows = max(1, min(H, chunk_pixels // W))

    maps = torch.empty(B, H, W, C, dtype=torch.complex64, device=dev)
    eigs = torch.empty(B, H, W, dtype=torch.float32, device=dev)
    for b in range(B):
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            A = (E0t[r0:r1] @ T[b]).view((r1 - r0) * W, C, C)  # per-pixel operator, (h*W, C, C)
            x, eig = _power_method(A, max_iter)
            maps[b, r0:r1] = x.view(r1 - r0, W, C)
            eigs[b, r0:r1] = eig.view(r1 - r0, W)

    # phase relative to coil 0 (sigpy: mps *= conj(mps[0] / |mps[0]|)), then crop by eigenvalue
    maps = maps * conj_phase(maps[..., :1]) * (eigs > crop).unsqueeze(-1)
    maps = maps.permute(0, 3, 1, 2).contiguous()
    if output_eigenvalue:
        return maps, eigs
    return maps
