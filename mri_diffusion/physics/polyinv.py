"""A pseudo-inverse that is LINEAR in its right-hand side: Chebyshev semi-iteration with fixed coefficients.

Why (the trap Stein's lemma sets for GSURE/ambient): CG stopped after a few iterations is a different
nonlinear function of every right-hand side (its step sizes are inner products of the rhs), so an input
``z = CG(y)`` does not depend on the measurement noise through one fixed linear map, and the Hutchinson
probe pushed through another CG run is not the Jacobian the identity needs. Measured at the shipped settings
(10 CG iterations, support-limited 8-coil maps, 4x): GSURE biased by 3-9 standard errors.

Here x = p(N) b with N = A^H A and a polynomial whose coefficients depend only on an interval
[a, b_max] that contains the spectrum we want to invert: K - 1 steps of Chebyshev semi-iteration (Saad,
*Iterative Methods for Sparse Linear Systems*, 2nd ed., Alg. 12.1) and one Richardson step x += r / b_max,
K applications of N in all. For N = A^H A and b = A^H y this is  B y  with the fixed linear operator
B = p(A^H A) A^H, and the "projection" it implies is the spectral filter

    P_K = B A = f_K(A^H A),   f_K(lam) = 1 - (1 - lam / b_max) T_K((theta - lam) / delta) / T_K(theta / delta),
    theta = (b_max + a) / 2,  delta = (b_max - a) / 2   (T_K: Chebyshev polynomial of the first kind).

f_K(0) = 0 (the null space of A stays empty); f_K(b_max) = 1 exactly, so single-coil Cartesian sampling
(eigenvalues 0 and 1 only) gives the exact projection F^H M F; |1 - f_K| <= 1 / T_K(theta/delta)
~ 2 exp(-2 K sqrt(a/b_max)) on [a, b_max] (those directions are inverted to that accuracy); below a it rolls
off smoothly to 0 like a Tikhonov filter: directions whose g-factor would amplify noise by more than
~1/sqrt(a) are damped instead of inverted. ``b_max`` must bound the spectrum (outside [a, b_max] from above T_K explodes): for A = M F S
with 0 <= M <= 1, ||A^H A|| <= max_pixel sum_c |S_c|^2 * max M, computed by ``sense_bound``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..types import bcast


def sense_bound(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Upper bound on ||A^H A|| per sample for A = M F S: max_pixel sum_c |S_c|^2 * max(M). (B,) float64.

    maps (B, C, H, W) complex, mask (B, 1, 1, W) or (B, 1, H, W). Depends on maps and mask only (never on y).
    """
    s = (maps.abs() ** 2).sum(dim=-3).reshape(maps.shape[0], -1).amax(dim=1)
    m = mask.reshape(mask.shape[0], -1).amax(dim=1)
    return (s.double() * m.double()).clamp_min(1e-30)


@dataclass(frozen=True)
class ChebyshevInverse:
    """x = p(N) b with fixed Chebyshev coefficients on [lam_min * b_max, b_max]; K applications of N.

    ``iters`` = K >= 1 (degree of the Chebyshev factor of the residual polynomial); ``lam_min`` in (0, 1): the lower end of the
    inverted interval relative to the spectral bound. Linear in ``b`` for fixed (N, b_max).
    """

    iters: int = 20
    lam_min: float = 0.01

    def __post_init__(self):
        if self.iters < 1:
            raise ValueError(f"ChebyshevInverse.iters = {self.iters}: must be >= 1")
        if not 0 < self.lam_min < 1:
            raise ValueError(f"ChebyshevInverse.lam_min = {self.lam_min}: must be in (0, 1)")

    def _interval(self, b_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.lam_min * b_max
        return (b_max + a) / 2, (b_max - a) / 2

    def solve(self, normal: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
              b_max: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Apply p_{K-1}(N) to b (B, ...); ``b_max`` (B,) or scalar bounds N's spectrum per sample."""
        bm = torch.as_tensor(b_max, dtype=torch.float64, device=b.device).reshape(-1)
        bm = bm.expand(b.shape[0]) if bm.numel() == 1 else bm
        theta, delta = self._interval(bm)
        sigma1 = theta / delta
        rho = 1.0 / sigma1
        d = b / bcast(theta, b)
        x = d
        r = b - normal(d)
        for _ in range(self.iters - 1):
            rho_next = 1.0 / (2 * sigma1 - rho)
            d = bcast(rho_next * rho, b) * d + bcast(2 * rho_next / delta, b) * r
            rho = rho_next
            x = x + d
            r = r - normal(d)
        return x + r / bcast(bm, b)  # Richardson step: the residual factor (1 - lam / b_max) makes f(b_max) = 1

    def filter(self, lam: torch.Tensor, b_max: float = 1.0) -> torch.Tensor:
        """f_K(lam) = lam p_{K-1}(lam): the eigenvalues of P_K = B A at eigenvalues ``lam`` of A^H A (float64)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        theta, delta = self._interval(torch.tensor(b_max, dtype=torch.float64))
        cheb = _cheb(self.iters, (theta - lam) / delta) / _cheb(self.iters, theta / delta)
        return 1 - (1 - lam / b_max) * cheb

    def accuracy(self) -> float:
        """Bound on |1 - f_K| over [lam_min, 1] * b_max: 1 / T_K((1 + lam_min) / (1 - lam_min))."""
        return 1.0 / float(_cheb(self.iters, torch.tensor((1 + self.lam_min) / (1 - self.lam_min),
                                                          dtype=torch.float64)))


def _cheb(k: int, t: torch.Tensor) -> torch.Tensor:
    """T_k(t) for real t (any sign or magnitude), by the three-term recurrence."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if k == 0:
        return torch.ones_like(t)
    prev, cur = torch.ones_like(t), t
    for _ in range(k - 1):
        prev, cur = cur, 2 * t * cur - prev
    return cur


__all__ = ["ChebyshevInverse", "sense_bound"]
