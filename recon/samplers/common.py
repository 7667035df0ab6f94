"""Pieces shared by the posterior samplers (``dds``, ``dps``, ``pc``, ``langevin``; ``cg`` is the old name of
``dds``, still accepted).

Every posterior sampler has the signature

    sample(denoiser, y, A, sigmas, *, noise, noise_std, callback=None, **options) -> x (B, H, W) complex64

* ``denoiser(x, sigma)`` ~ E[x0 | x]; x complex (B, H, W), sigma (B,) float32 (per-real-channel std).
* ``y`` (B, C, H, W) complex64 measured k-space (zeros off the mask); ``A`` a LinearOp (B,H,W) -> (B,C,H,W).
* ``sigmas`` a decreasing 1-D tensor ending in 0 (``karras_sigmas`` / ``geometric_sigmas`` / ``default_sigmas``).
* ``noise_std`` (B,) = sigma_y, the CN(0, sigma_y^2) std of each k-space entry, i.e. sigma_y^2 / 2 per real
  channel (``noise_var_per_channel``). Every likelihood below is written with that per-channel variance,
  so it lives in the same units as the diffusion ``sigma`` (the score of exp(-|y - A x|^2 / sigma_y^2) with
  respect to (Re x, Im x), packed as a complex tensor, is A^H (y - A x) / (sigma_y^2 / 2)).
* ``noise`` a :class:`NoiseSource`: all randomness comes from it, and element b of every draw depends only on
  (seeds[b], step, sub), so a slice's result does not depend on how slices / samples are batched.
* ``callback(i, x, x0_hat)`` is called after every noise level i with the current iterate and clean-image
  estimate (D(x, sigma_i); for ``dds`` the data-consistent x0 after the CG step).

``network_calls(name, steps, **options)`` gives the number of denoiser calls one run makes per batch (each call
handles the whole batch, so this is also the count per slice); ``CountingDenoiser`` counts them for real.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import torch

from mri_diffusion.physics.cg import conjugate_gradient
from mri_diffusion.physics.fft import fft2c, ifft2c
from mri_diffusion.physics.linop import LinearOp
from mri_diffusion.physics.sense import Sense
from mri_diffusion.types import Denoiser, bcast, score

from .prior import karras_sigmas

__all__ = [
    "NoiseSource", "derive_seed", "CountingDenoiser", "karras_sigmas", "geometric_sigmas", "default_sigmas",
    "network_calls", "get_sampler", "canonical_sampler", "SAMPLER_NAMES", "SAMPLER_ALIASES", "levels", "sigma_vec", "denoise", "score_and_denoised",
    "noise_var_per_channel", "likelihood_grad", "is_single_coil", "hard_projection", "kaczmarz", "prox_solve",
    "residual_norm",
]

SAMPLER_NAMES = ("dds", "dps", "pc", "langevin")
SAMPLER_ALIASES = {"cg": "dds"}  # old names that still work (``cg`` named dds after its solver, physics.cg)

# ----------------------------------------------------------------------------------------------- noise

_MASK64 = (1 << 64) - 1


def _i64(v: int) -> int:
    """A python int as the signed int64 with the same low 64 bits."""
    v &= _MASK64
    return v - (1 << 64) if v >= (1 << 63) else v


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014) on int64 tensors (multiplication wraps mod 2^64)."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from e.g. (file name, slice index, sample index); independent of PYTHONHASHSEED."""
    h = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class NoiseSource:
    """Per-element counter-based Gaussian noise: element b of ``randn(step, shape)`` is a function of
    (seeds[b], step, sub, shape) only, identical on CPU and CUDA up to float32 rounding of log/cos.

    The bits come from SplitMix64 applied to the counter (key(seed_b, step, sub) + (j + 1) * golden), j the flat
    index; each word gives two normals by Box-Muller from two 24-bit uniforms (exact in float32, |z| <= 5.77).
    """

    def __init__(self, seeds: Sequence[int] | torch.Tensor):
        seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
        if not seeds:
            raise ValueError("NoiseSource needs one seed per batch element")
        self.seeds = [int(s) for s in seeds]
        self._keys = torch.tensor([_i64(s) for s in self.seeds], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def batch_size(self) -> int:
        return len(self.seeds)

    def __getitem__(self, idx) -> "NoiseSource":
        sel = self.seeds[idx]
        return NoiseSource(sel if isinstance(sel, list) else [sel])

    def _bits(self, step: int, sub: int, n: int, device) -> torch.Tensor:
        k = _mix(self._keys.to(device) ^ _GOLDEN)
        k = _mix(k + _i64(step * _GOLDEN))
        k = _mix(k + _i64(sub * _M1))
        j = torch.arange(1, n + 1, dtype=torch.int64, device=device)
        return _mix(k[:, None] + j[None, :] * _GOLDEN)

    def randn_real(self, step: int, shape: tuple[int, ...], device=None, sub: int = 0) -> torch.Tensor:
        """float32 (B, *shape) i.i.d. N(0, 1)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        n = math.prod(shape)
        h = self._bits(step, sub, (n + 1) // 2, device)  # one 64-bit word -> a Box-Muller pair
        u1 = (_srl(h, 40) + 1).to(torch.float32) * (2.0 ** -24)  # (0, 1]
        u2 = (_srl(h, 16) & 0xFFFFFF).to(torch.float32) * (2.0 ** -24)  # [0, 1)
        r = torch.sqrt(-2.0 * torch.log(u1))
        t = (2.0 * math.pi) * u2
        z = torch.cat([r * torch.cos(t), r * torch.sin(t)], dim=1)[:, :n]
        return z.reshape(len(self.seeds), *shape)

    def randn(self, step: int, shape: tuple[int, ...], device=None, sub: int = 0) -> torch.Tensor:
        """complex64 (B, *shape) with i.i.d. N(0, 1) real and imaginary parts (E|z|^2 = 2)."""
        z = self.randn_real(step, (2, *shape), device, sub)
        return torch.complex(z[:, 0], z[:, 1])

    def init(self, shape: tuple[int, ...], device=None) -> torch.Tensor:
        """The starting noise (unit per real channel); samplers multiply it by sigmas[0]."""
        return self.randn(-1, shape, device, sub=0)


# ----------------------------------------------------------------------------------------------- counting


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (``calls``) and the batch elements it saw (``items``)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser
        self.calls = 0
        self.items = 0
        self.sigma_data = getattr(denoiser, "sigma_data", None)

    def __call__(self, x, sigma):
        self.calls += 1
        self.items += x.shape[0]
        return self.denoiser(x, sigma)


# ----------------------------------------------------------------------------------------------- schedules


def geometric_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """VE / NCSN schedule sigma_i = sigma_max (sigma_min / sigma_max)^(i / (n - 1)), plus a final 0. (n+1,)"""
    i = torch.arange(n, dtype=torch.float64)
    s = sigma_max * (sigma_min / sigma_max) ** (i / max(n - 1, 1))
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


_DEFAULT_SCHEDULES = {
    # name: (kind, steps, sigma_min, sigma_max)
    # DDS-style, few steps. Data consistency fixes the coarse structure, so starting at sigma 5 instead of 80
    # spends the 30 calls where they matter: on the built-in data at 4x (DSM prior, 2 samples) 30 levels from
    # 80 gave 32.4 dB, from 10 33.4 dB, from 3 33.8 dB, vs 34.1 dB for 200 levels from 80.
    "dds": ("karras", 30, 0.002, 5.0),
    "dps": ("karras", 500, 0.004, 10.0),  # A-DPS script: EDM Euler, sigma 10 -> 0.004, 500 steps
    "pc": ("geometric", 500, 0.002, 80.0),  # score-MRI: VE SDE, N = 500 (hybrid script default)
    "langevin": ("geometric", 250, 0.002, 20.0),  # NCSN-style geometric levels, n_steps each
}


def canonical_sampler(name: str) -> str:
    """The sampler's name, with old names (``SAMPLER_ALIASES``: ``cg`` -> ``dds``) resolved; ValueError if unknown."""
    name = SAMPLER_ALIASES.get(name, name)
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLER_NAMES}")
    return name


def default_sigmas(name: str, steps: int | None = None, sigma_min: float | None = None,
                   sigma_max: float | None = None, rho: float | None = None) -> torch.Tensor:
    """The default noise levels (n+1,) of sampler ``name``; ``steps`` = number of positive levels. ``rho``: the
    Karras schedule's curvature (default 7; refused for the samplers with a geometric schedule)."""
    kind, n, lo, hi = _DEFAULT_SCHEDULES[canonical_sampler(name)]
    n = n if steps is None else int(steps)
    lo = lo if sigma_min is None else sigma_min
    hi = hi if sigma_max is None else sigma_max
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    if kind == "karras":
        return karras_sigmas(n, lo, hi) if rho is None else karras_sigmas(n, lo, hi, rho=float(rho))
    if rho is not None:
        raise ValueError(f"sampler {name!r} uses a geometric schedule; rho applies to Karras schedules only")
    return geometric_sigmas(n, lo, hi)


def _module(name: str):
    import importlib

    return importlib.import_module(f"{__package__}.{canonical_sampler(name)}")


def get_sampler(name: str) -> Callable:
    """The ``sample`` function of sampler ``name``."""
    return _module(name).sample


def network_calls(name: str, steps: int, **options) -> int:
    """Denoiser calls of one run of sampler ``name`` with ``steps`` positive noise levels (len(sigmas) - 1)."""
    return _module(name).network_calls(steps, **options)


def levels(sigmas: torch.Tensor) -> list[float]:
    """Validate a schedule (1-D, strictly decreasing, positive, ending in exactly one 0) and return floats."""
    s = torch.as_tensor(sigmas).detach().double().cpu()
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with >= 2 entries, got shape {tuple(s.shape)}")
    if float(s[-1]) != 0.0 or bool((s[:-1] <= 0).any()) or bool((s[1:] >= s[:-1]).any()):
        raise ValueError("sigmas must be strictly decreasing, positive, and end in 0")
    return [float(v) for v in s]


# ----------------------------------------------------------------------------------------------- denoiser


def sigma_vec(s: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(s), dtype=torch.float32, device=x.device)


def denoise(denoiser: Denoiser, x: torch.Tensor, s: float) -> torch.Tensor:
    """x0_hat = D(x, s) as complex64."""
    return denoiser(x, sigma_vec(s, x)).to(torch.complex64)


def score_and_denoised(denoiser: Denoiser, x: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, x0_hat) from ONE denoiser call; the score is ``mri_diffusion.types.score`` (Tweedie)."""
    out = {}

    def keep(xx, ss):
        out["d"] = denoiser(xx, ss).to(torch.complex64)
        return out["d"]

    sc = score(keep, x, sigma_vec(s, x))
    return sc, out["d"]


# ----------------------------------------------------------------------------------------------- physics


def noise_var_per_channel(noise_std: torch.Tensor) -> torch.Tensor:
    """sigma_y (CN std per k-space entry) -> sigma_y^2 / 2, the variance per real channel. (B,) float32."""
    return (torch.as_tensor(noise_std).to(torch.float32).reshape(-1) ** 2) / 2


def likelihood_grad(A: LinearOp, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A^H (y - A x): (sigma_y^2/2) x the score of the Gaussian likelihood in real-channel units."""
    return A.adjoint(y - A.forward(x))


def residual_norm(A: LinearOp, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ||A x - y||, (B,) float32."""
    r = A.forward(x) - y
    return torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)


def is_single_coil(A: LinearOp) -> bool:
    """True for Sense with C = 1 and maps == 1 everywhere (then A^H A = F^H M F is a projection)."""
    return isinstance(A, Sense) and A.num_coils == 1 and bool((A.maps == 1).all())


def hard_projection(A: Sense, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Single-coil data consistency in k-space: x <- F^H((1 - M) F x + M y) replaces the sampled k-space by y;
    with ``weight`` w (B,) it moves the sampled entries the fraction w towards y, F x + w M (y - F x) (w = 1: the
    replacement)."""
    m = A.mask[:, 0].to(torch.float32)  # (B, 1, W) or (B, H, W)
    k = fft2c(x)
    if weight is None:
        return ifft2c((1 - m) * k + m * y[:, 0])
    return ifft2c(k + bcast(weight, k) * m * (y[:, 0] - k))


def kaczmarz(A: LinearOp, x: torch.Tensor, y: torch.Tensor, lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """One SENSE gradient / Kaczmarz step x <- x + lam A^H (y - A x) (score-MRI hybrid); ``lam`` a number or (B,)."""
    return x + (bcast(lam, x) if torch.is_tensor(lam) else lam) * likelihood_grad(A, x, y)


def data_weight(level: float, sy2: torch.Tensor) -> torch.Tensor | None:
    """w = level^2 / (level^2 + sy2) (B,): how far a data-consistency step moves an iterate with noise ``level`` (per
    real channel) towards measurements with noise variance ``sy2`` (per real channel) -- the weight of y in the
    Gaussian combination of the two estimates of the measured k-space. None for noiseless data (sy2 = 0 for every
    element: w = 1, the full step)."""
    if not bool((sy2 > 0).any()):
        return None
    l2 = torch.full_like(sy2, level * level)
    return l2 / (l2 + sy2)


def prox_solve(A: LinearOp, y: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, iters: int = 5,
               tol: float = 0.0) -> torch.Tensor:
    """argmin_x ||y - A x||^2 + lam ||x - v||^2, i.e. (A^H A + lam) x = A^H y + lam v, by CG warm-started at v.

    ``lam`` is (B,) or broadcastable to x (a per-pixel weight); lam = 0 gives the projection of v onto
    {A x = y} (CG from v only moves within range(A^H A)).
    """
    lam = bcast(lam, v) if lam.ndim == 1 else lam.to(v.real.dtype)

    def normal(u):
        return A.normal(u) + lam * u

    return conjugate_gradient(normal, A.adjoint(y) + lam * v, x0=v, max_iter=iters, tol=tol)
