"""Batched conjugate gradient, the pseudo-inverse (A^H A)^+ A^H and the projection P = A^+ A.

CG solves (A^H A + lam I) x = b for every batch element at once (per-sample step sizes, per-sample
convergence), warm-started from ``x0``. All inner products accumulate in float64 for stability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..types import bcast
from .linop import LinearOp


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample real part of <a, b>: (B,) float64."""
    prod = (a.conj() * b).real if torch.is_complex(a) else a * b
    return prod.reshape(prod.shape[0], -1).sum(dim=1, dtype=torch.float64)


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 10,
    tol: float = 0.0,
) -> torch.Tensor:
    """Solve normal(x) = b for Hermitian positive (semi-)definite ``normal``, batched over dim 0.

    b: (B, ...). Stops early for samples whose residual norm falls below ``tol * ||b||``; ``tol`` is never
    taken below ~10 machine epsilons of b's precision, where further iterations only amplify round-off.
    Returns x with the shape of b. Differentiable (plain torch ops), so it can sit inside a loss.
    """
    tol = max(tol, 10 * torch.finfo(b.real.dtype if torch.is_complex(b) else b.dtype).eps)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - normal(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    bnorm = _dot(b, b).clamp_min(1e-60)
    for _ in range(max_iter):
        active = rr > (tol**2) * bnorm
        if not bool(active.any()):
            break
        Ap = normal(p)
        pAp = _dot(p, Ap)
        alpha = torch.where(active & (pAp > 0), rr / pAp.clamp_min(1e-60), torch.zeros_like(rr))
        x = x + bcast(alpha, x) * p
        r = r - bcast(alpha, r) * Ap
        rr_new = _dot(r, r)
        beta = torch.where(active, rr_new / rr.clamp_min(1e-60), torch.zeros_like(rr))
        p = r + bcast(beta, p) * p
        rr = rr_new
    return x


def pinv(A: LinearOp, y: torch.Tensor, max_iter: int = 20, tol: float = 1e-6, x0: torch.Tensor | None = None,
         lam: float = 0.0) -> torch.Tensor:
    """x = (A^H A + lam I)^{-1} A^H y by CG: the least-squares (CG-SENSE) solution for lam = 0."""
    normal = A.normal if lam == 0 else (lambda v: A.normal(v) + lam * v)
    return conjugate_gradient(normal, A.adjoint(y), x0=x0, max_iter=max_iter, tol=tol)


@dataclass(frozen=True)
class Projection(LinearOp):
    """P = A^+ A = (A^H A)^+ A^H A, the orthogonal projection onto the row space of A.

    Applied by CG on A^H A z = A^H A x, started at the component of x we already know lies in the
    range (warm start ``x0`` if given). Exact (up to CG tolerance) for any A; for single-coil Cartesian A
    it equals F^H M F. Self-adjoint and idempotent.
    """

    A: LinearOp
    max_iter: int = 10
    tol: float = 1e-6

    def forward(self, x, x0: torch.Tensor | None = None):
        return conjugate_gradient(self.A.normal, self.A.normal(x), x0=x0, max_iter=self.max_iter, tol=self.tol)

    def adjoint(self, y):
        return self.forward(y)
