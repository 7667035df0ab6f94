"""One measurement model: a slice of k-space and what its file says -> what every consumer of the slice sees.

``prep`` (training sets) and ``recon`` (reconstruction) condition every slice with :meth:`MeasurementModel.condition`,
so a prior is trained and used on data conditioned the same way. In order:

0. prewhitening (``noise_cov``, a coil noise covariance Psi from a noise scan; optional): k <- L^-1 k with
   Psi = L L^H (Cholesky, lower triangular, so whitened coil 0 keeps the phase of physical coil 0); the noise is
   then CN(0, 1) per entry in every coil, and the noise level is 1 in raw (whitened) units (source 'noise scan').
1. mask (:func:`choose_mask`): the file's own ``mask`` when it has one (undersampled data), else the sampler's
   mask with the caller's seed (prep: per (file, slice, seed), a new mask per training slice; recon: per (file,
   seed), one mask per volume, fastMRI's validation convention); ``use_file_mask=False`` multiplies the
   sampler's mask by the file's (only lines in both were measured).
2. undersampling: ``k = kspace * mask + 0.0`` (no negative zeros, as fastMRI's ``apply_mask``); a fully sampled
   view (no mask) is kept as it is.
3. scale (``physics.normalize.acs_scale``): the 99th percentile of the RSS image of the ACS lines alone (measured
   data only), ``k /= scale``; views use the full-resolution scans' ACS width and divide by the view's amplitude
   factor (``scale_width``, ``amplitude``), so that a view image is V applied to the normalised full image.
4. coil compression (``virtual_coils``; recon of scans with many coils): SVD to that many virtual coils
   (``physics.compress``); the maps' phase reference stays the physical coil 0.
5. coil maps (``physics.calib.estimate_maps``): ESPIRiT on the ACS, calibration region ``calib_rows`` x the ACS
   width, phase of coil 0 (or of ``U[0]`` after compression); S = 1 for single-coil data or ``maps=False``.
6. noise level sigma_y (CN std per k-space entry, normalised units, ``types.py``): 1 / scale after prewhitening;
   else given (raw units) / scale;
   else the file's ``noise_std`` attribute / scale (``use_file_noise_std``); else :func:`estimate_noise_std`
   on the measured entries.
7. density: the sampler's E[mask], computed once per set by the caller and carried along.

Every failure (no signal in the ACS, too few ACS lines for maps, a noise estimate that fails, NaN/Inf) is ONE
kind of error: ``DataError`` naming the file and slice (``where``); nothing becomes a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .physics.calib import estimate_maps
from .physics.compress import compress, compression_matrix
from .physics.masks import MaskSampler, mask_from_file
from .physics.normalize import acs_scale
from .types import DataError

NOISE_EDGE_FRACTION = 0.08  # rows at each readout edge used by the noise estimate
SCALE_RULE = "99th percentile of the ACS-only RSS image (mri_diffusion.physics.normalize.acs_scale)"
NOISE_RULE = (
    "noise_std = sigma_y, CN std per k-space entry (E|n|^2 = sigma_y^2) in normalised units: 1 / scale when the "
    "file's noise scan prewhitened the coils (noise CN(0, 1) per entry, 1/sqrt(2) per real channel); else config noise_std "
    "(raw units) / scale if given; else the file's 'noise_std' attribute / scale (simulated data) if "
    "use_file_noise_std; else a robust MAD estimate on measured entries only: the outermost "
    f"{NOISE_EDGE_FRACTION:.0%} of readout rows (H) at each edge, sampled entries, exact zeros excluded, "
    "sigma_y = sqrt(2) * median(|Re|, |Im| pooled over coils) / 0.6745 (biased upward where signal reaches "
    "the k-space edge)")


def estimate_noise_std(kspace: torch.Tensor, mask: torch.Tensor, edge_fraction: float = NOISE_EDGE_FRACTION) -> float:
    """sigma_y (CN std per entry) of masked k-space (C, H, W) from measured entries only.

    MAD on the outermost ``edge_fraction`` of readout rows at each edge (where MR signal is weakest),
    restricted to sampled, non-zero entries (zeros are unacquired or zero-padded): per real channel
    sigma = median(|Re|, |Im|) / 0.6745 (Gaussian MAD), sigma_y = sqrt(2) sigma. Returns NaN when
    fewer than 16 values are available.
    """
    C, H, W = kspace.shape
    n = max(1, int(round(edge_fraction * H)))
    rows = torch.cat([torch.arange(n), torch.arange(H - n, H)]).to(kspace.device)
    sampled = (mask.reshape(-1, mask.shape[-2], W)[0] > 0).expand(H, W)[rows]
    v = kspace[:, rows][:, sampled]
    v = v[v != 0]
    if v.numel() < 16:
        return float("nan")
    pooled = torch.cat([v.real.abs(), v.imag.abs()]).double()
    return float(pooled.median() / 0.6745 * np.sqrt(2.0))


def choose_mask(shape: tuple[int, int], sampler: MaskSampler, seed: int, file_mask: np.ndarray | None = None,
                use_file_mask: bool = True, name: str = "mask") -> tuple[torch.Tensor, str]:
    """The slice's sampling mask (1, 1, W) or (1, H, W) and where it came from: 'file' (the file's own),
    'retrospective' (``sampler`` with ``seed``) or 'retrospective x file' (``use_file_mask=False`` on a file with
    its own mask). ``name`` labels the file's mask in errors."""
    H, W = shape
    if file_mask is not None and use_file_mask:
        return mask_from_file(file_mask, W, name=name), "file"
    mask = sampler.sample((H, W), seed=seed)
    if file_mask is None:
        return mask, "retrospective"
    return mask * mask_from_file(file_mask, W, name=name), "retrospective x file"


def noise_source(noise_std: float | None, use_file_noise_std: bool, attrs: dict) -> str:
    """Where the noise level comes from: 'config' (given), 'file attribute' or 'estimated'."""
    if noise_std is not None:
        return "config"
    if use_file_noise_std and "noise_std" in attrs:
        return "file attribute"
    return "estimated"


@dataclass(frozen=True)
class Measurement:
    """A conditioned slice: normalised masked k-space (C, H, W) (virtual coils after compression), its mask, coil
    maps (C, H, W), the scale (file units = normalised units x scale), sigma_y in normalised units and its
    source, the density (as the caller gave it), after compression the kept coil energy share, and the coil
    transform T (n, C) that prewhitening and compression applied (k = T k_raw / scale; None: identity), so that a
    caller can bring other k-space of the slice (a fully sampled target) into the same coils."""

    kspace: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor
    scale: float
    noise_std: float
    noise_source: str
    density: Any = None
    coil_energy_kept: float | None = None
    coil_transform: torch.Tensor | None = None  # (n, C): raw coils -> the coils of ``kspace`` (None: identity)


@dataclass(frozen=True)
class MeasurementModel:
    """How slices are conditioned (module doc): ESPIRiT calibration rows, the noise level (``noise_std`` in raw
    k-space units wins; else the file's attribute when ``use_file_noise_std``; else estimated), optional SVD coil
    compression, and whether coil maps and the noise level are wanted at all (``maps=False``: S = 1, zero-filled
    needs none; ``noise=False``: noise_std NaN, source 'not used', for methods that ignore it)."""

    calib_rows: int = 24
    noise_std: float | None = None
    use_file_noise_std: bool = True
    virtual_coils: int | None = None
    maps: bool = True
    noise: bool = True

    def condition(self, kspace: torch.Tensor, mask: torch.Tensor | None = None, *, attrs: dict | None = None,
                  where: str = "slice", mask_name: str = "the mask", density: Any = None,
                  scale_width: int | None = None, amplitude: float = 1.0,
                  noise_cov: torch.Tensor | None = None) -> Measurement:
        """Condition one slice of raw k-space (C, H, W) sampled by ``mask`` (None: fully sampled, e.g. a view).

        ``attrs``: the file's attributes (``noise_std``); ``where``: 'file: slice i', the start of every error
        message; ``mask_name`` names the mask in errors; ``scale_width`` / ``amplitude``: the view scale rule;
        ``noise_cov``: the coil noise covariance (C, C) of a noise scan, to prewhiten with (step 0)."""
        attrs = attrs or {}
        transform = None
        if noise_cov is not None:
            psi = torch.as_tensor(noise_cov, dtype=torch.complex128)
            if psi.shape != (kspace.shape[0],) * 2:
                raise DataError(f"{where}: noise covariance {tuple(psi.shape)} does not match {kspace.shape[0]} coils")
            L, info = torch.linalg.cholesky_ex(psi)
            if int(info):
                raise DataError(f"{where}: the coil noise covariance is not positive definite")
            eye = torch.eye(psi.shape[0], dtype=psi.dtype)
            transform = torch.linalg.solve_triangular(L, eye, upper=False).to(kspace.dtype).to(kspace.device)
            kspace = torch.einsum("dc,chw->dhw", transform, kspace)
        if mask is None:
            k = kspace
            mask = torch.ones(1, 1, kspace.shape[-1], device=kspace.device)
        else:
            k = kspace * mask + 0.0
        try:
            scale = acs_scale(k, mask, width=scale_width) / amplitude
        except ValueError as e:
            raise DataError(f"{where}: {e}: no signal in the k-space centre lines that {mask_name} samples") from None
        k = k / scale
        ref, kept = None, None
        if self.virtual_coils and k.shape[0] > self.virtual_coils:
            U, kept = compression_matrix(k, mask, self.virtual_coils)
            k, ref = compress(k, U), U[0]
            Uh = U.conj().T
            transform = Uh if transform is None else Uh @ transform
        if self.maps:
            try:
                maps = estimate_maps(k, mask, calib_rows=self.calib_rows, phase_ref=ref)
            except ValueError as e:
                raise DataError(f"{where}: {e} (k-space {tuple(k.shape)}, {mask_name})") from None
        else:
            maps = torch.ones_like(k)
        source = noise_source(self.noise_std, self.use_file_noise_std, attrs) if self.noise else "not used"
        if source != "not used" and noise_cov is not None:
            source = "noise scan"
        if source == "not used":
            noise = float("nan")
        elif source == "noise scan":
            noise = 1.0 / scale
        elif source == "config":
            noise = self.noise_std / scale
        elif source == "file attribute":
            noise = float(attrs["noise_std"]) / scale
        else:
            noise = estimate_noise_std(k, mask)
            if not np.isfinite(noise) or noise <= 0:
                raise DataError(f"{where}: cannot estimate the noise level from the k-space edge (too few non-zero "
                                "sampled entries); give it (--noise-std, in the file's k-space units)")
        for key, t in (("kspace", k), ("maps", maps)):
            if not bool(torch.isfinite(torch.view_as_real(t)).all()):
                raise DataError(f"{where}: '{key}' contains NaN/Inf after conditioning")
        return Measurement(k, mask, maps, float(scale), float(noise), source, density, kept, transform)
