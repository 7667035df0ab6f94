"""SVD coil compression (Buehrer et al., MRM 2007; Huang et al., MRI 2008): C physical -> n virtual coils.

The virtual coils are the top-n left singular vectors U (C, n) of the sampled k-space samples of a slice
(coils x entries): k_v = U^H k per k-space entry. U has orthonormal columns, so white k-space noise stays
white with the same level (noise_std is unchanged) and nothing is lost when the discarded singular values
are ~0. Coil maps are then estimated on the virtual coils. Cost of everything coil-wise after it (ESPIRiT,
every CG iteration of data consistency) scales with n instead of C.
"""

from __future__ import annotations

import torch


def compression_matrix(kspace: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    """U (C, n) from masked k-space (C, H, W) and its mask (1, 1, W) or (1, H, W); and the kept energy share."""
    C = kspace.shape[0]
    if not 1 <= n <= C:
        raise ValueError(f"virtual coils must be in 1..{C}, got {n}")
    sel = (mask.expand(1, *kspace.shape[-2:])[0] > 0)
    X = kspace[:, sel]  # (C, N) sampled entries
    if X.shape[1] == 0:
        raise ValueError("no sampled k-space entries to compress coils from")
    U, s, _ = torch.linalg.svd(X, full_matrices=False)
    e = s.abs() ** 2
    return U[:, :n].contiguous(), float(e[:n].sum() / e.sum().clamp_min(1e-30))


def compress(kspace: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """k_v = U^H k: (C, H, W) -> (n, H, W)."""
    return torch.einsum("cv,chw->vhw", U.conj(), kspace)
