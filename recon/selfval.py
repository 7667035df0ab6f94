"""Self-validation from the measurements alone: hold out a few measured k-space positions, reconstruct from the
rest, and measure the error on the held-out ones.

No ground truth exists for a clinical scan, but its measured k-space is a sample of the truth. Hold out a random
set V of the measured positions outside the calibration block (1-D masks: whole phase-encode lines; 2-D masks:
single positions), reconstruct x from the others, and compare the prediction F S x with the measurements on V
(``split_mask``, ``validation_error``). The held-out residual is r = y_V - M_V F S x = M_V F S (x_true - x) + n_V
(+ what the coil model does not explain), so with n_V ~ CN(0, sigma_y^2) per entry,

    E ||r||^2 = ||M_V F S (x_true - x)||^2 + |V| C sigma_y^2            (|V|: held-out entries per coil)

and ``error`` = ||r||^2 - |V| C sigma_y^2 is an unbiased estimate of the reconstruction's error energy on V
(sum_c |S_c|^2 = 1 inside the maps' support, so per-coil k-space error energy is image error energy).
Outside the fully sampled centre, fastMRI's random and equispaced masks sample every line with the same
probability, so the held-out positions stand for the unmeasured ones at the same radius, and

    MSE_est = sum_j U_j e_j / (H W)                                    (per pixel, complex image)

estimates the mean squared error of the whole image from measured data alone, e_j the error energy at held-out
position j and U_j the number of unmeasured positions its stratum stands for (``split_mask``: strata of k-space
radius, because the error of a position depends mostly on its radius; the error of measured positions, about
the noise level, is left out). The reconstruction that made e_j saw fewer lines than the final one, so the
estimate is pessimistic by about what those lines are worth. ``estimated_psnr`` turns it into a PSNR with the
reconstruction's own maximum as range.

A posterior sampler also predicts its own error on V: with K samples x_k, mean m and unbiased spread
s_V^2 = sum_k ||M_V F S (x_k - m)||^2 / (K - 1), a calibrated posterior has E||M_V F S (x_true - m)||^2 =
s_V^2 (1 + 1/K) (``posterior_predicted``). Their ratio (``calibration_ratio``) is about 1 on scans like the
training set; a prior that invents structure is confidently wrong there and the ratio grows. The spread is
also the best auxiliary variable for the whole-image estimate (``ratio_estimate``): the held-out lines are
few, and the error of a line depends on its radius and on the gap it sits in, both of which the posterior
spread follows; the ratio estimate (held-out error / held-out spread) x (spread outside the mask) has a third
of the scatter of the stratified direct estimate on real brain slices. For any other reconstruction x (a
classical candidate) the auxiliary is the error the posterior expects of x, ||F S (x - m)||^2 + spread
(``expected_energy``): x's error is not spread over k-space like the posterior's own, and with the spread
alone as auxiliary the estimates of CG-SENSE and L1-wavelet ranked worse than chance on some sets (BENCHMARKS.md,
"The estimate of each candidate's quality").

The held-out positions are drawn by a seeded generator (the caller seeds it per file and slice); ``folds``
disjoint sets give a lower-variance estimate (their mean) at ``folds`` times the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mri_diffusion.physics.fft import fft2c
from mri_diffusion.physics.masks import acs_block


@dataclass(frozen=True)
class Split:
    """One fold: ``recon_mask`` = mask without ``val_mask`` (both shaped like the mask, float32). The held-out
    positions ``val_index`` (flat indices into the mask's (h, w), one per stratum, nearest the centre first) and
    ``weights``: the number of positions outside the mask in each stratum's band of k-space radius (their sum is
    ``n_unmeasured``)."""

    recon_mask: torch.Tensor
    val_mask: torch.Tensor
    val_index: torch.Tensor  # (n_val,) int64
    weights: torch.Tensor    # (n_val,) float64
    n_unmeasured: int

    @property
    def n_val(self) -> int:
        return int(self.val_index.numel())


def calibration_region(mask: torch.Tensor) -> torch.Tensor:
    """Boolean, shaped like ``mask`` (1, 1, W) or (1, H, W): the fully sampled block around the k-space centre
    (1-D: the ACS columns; 2-D: the rectangle of the contiguous sampled rows and columns through the centre)."""
    m = mask.reshape(mask.shape[-2:]).bool()
    region = torch.zeros_like(m)
    if m.shape[0] == 1:
        lo, hi = acs_block(m[0])
        region[0, lo:hi] = True
    else:
        H, W = m.shape
        clo, chi = acs_block(m[H // 2])
        rlo, rhi = acs_block(m[:, W // 2])
        region[rlo:rhi, clo:chi] = True
    return region.reshape(mask.shape)


def radius(shape: tuple[int, int]) -> np.ndarray:
    """(h, w) normalised distance of every k-space position from the centre (1-D masks: |column - W/2| / W)."""
    h, w = shape
    ky = (np.arange(h) - h // 2) / max(h, 1)
    kx = (np.arange(w) - w // 2) / w
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) if h > 1 else np.abs(kx)[None, :]


def _candidates(mask: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(the mask flattened, bool; every position's k-space radius; the flat indices of the sampled positions
    outside the calibration block, in index order)."""
    flat = mask.reshape(-1).bool().cpu()
    cand = torch.nonzero(flat & ~calibration_region(mask).reshape(-1).cpu()).reshape(-1).numpy()
    return flat, radius(tuple(mask.shape[-2:])).reshape(-1), cand


def split_mask(mask: torch.Tensor, fraction: float, seed: int, folds: int = 1) -> list[Split]:
    """Up to ``folds`` disjoint held-out sets of n_val = max(2, round(fraction * n)) positions each, n the sampled
    positions outside the calibration block, stratified by k-space radius: the n candidates sorted by radius are
    cut into n_val strata of (almost) equal size and each fold holds out one random position of every stratum.
    The reconstruction error of a position depends strongly on its radius (largest just outside the calibration
    block), so stratifying removes most of the variance of a uniform draw. The folds are capped at the smallest
    stratum's size (a sparse mask gets fewer folds, not none); [] when the candidates are fewer than n_val.
    mask: (1, 1, W) or (1, H, W), 0/1."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    flat, r, cand = _candidates(mask)
    n_val = max(2, int(round(fraction * len(cand))))
    if len(cand) < n_val:
        return []
    cand = cand[np.argsort(r[cand], kind="stable")]
    strata = np.array_split(cand, n_val)
    folds = min(folds, min(len(s) for s in strata))
    # band edges half-way between neighbouring strata; the first band starts at 0, the last is open
    edges = [0.0] + [(r[a[-1]] + r[b[0]]) / 2 for a, b in zip(strata[:-1], strata[1:])] + [np.inf]
    out_r = r[~flat.numpy()]
    weights = torch.tensor([float(((out_r >= lo) & (out_r < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])],
                           dtype=torch.float64)
    rng = np.random.default_rng(int(seed) % 2**32)
    picks = [rng.permutation(s)[:folds] for s in strata]
    out = []
    for f in range(folds):
        idx = torch.from_numpy(np.array([p[f] for p in picks], dtype=np.int64))
        val = torch.zeros(flat.shape, dtype=mask.dtype)
        val[idx] = 1
        val = val.reshape(mask.shape).to(mask.device)
        out.append(Split(recon_mask=mask * (1 - val), val_mask=val, val_index=idx, weights=weights,
                         n_unmeasured=int((~flat).sum())))
    return out


def cv_splits(mask: torch.Tensor, folds: int, seed: int) -> list[Split]:
    """K-fold cross-validation over every sampled position outside the calibration block: each is held out in
    exactly one of ``folds`` folds. The candidates sorted by k-space radius are cut into strata of ``folds``
    consecutive positions and each stratum's positions go to the folds in a seeded random order, so every fold
    holds out one position per stratum (the last stratum may be short): folds are balanced in radius like
    ``split_mask``'s. A fold's ``weights`` count the unmeasured positions in bands half-way between its held-out
    radii. With fewer positions than ``folds`` it is leave-one-out; [] with fewer than 2 positions.
    mask: (1, 1, W) or (1, H, W), 0/1."""
    if folds < 2:
        raise ValueError(f"cross-validation needs folds >= 2, got {folds}")
    flat, r, cand = _candidates(mask)
    folds = min(folds, len(cand))
    if folds < 2:
        return []
    cand = cand[np.argsort(r[cand], kind="stable")]
    rng = np.random.default_rng(int(seed) % 2**32)
    owner = np.concatenate([rng.permutation(folds)[: len(s)] for s in np.array_split(cand, range(folds, len(cand), folds))])
    out_r = r[~flat.numpy()]
    out = []
    for f in range(folds):
        pos = cand[owner == f]  # nearest the centre first
        edges = [0.0] + [(r[a] + r[b]) / 2 for a, b in zip(pos[:-1], pos[1:])] + [np.inf]
        weights = torch.tensor([float(((out_r >= lo) & (out_r < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])],
                               dtype=torch.float64)
        val = torch.zeros(flat.shape, dtype=mask.dtype)
        val[torch.from_numpy(pos)] = 1
        val = val.reshape(mask.shape).to(mask.device)
        out.append(Split(recon_mask=mask * (1 - val), val_mask=val, val_index=torch.from_numpy(pos.astype(np.int64)),
                         weights=weights, n_unmeasured=int((~flat).sum())))
    return out


def _predict(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """F S x: (..., H, W) complex images and (C, H, W) maps -> (..., C, H, W) coil k-space."""
    return fft2c(maps * x.unsqueeze(-3))


def validation_error(y: torch.Tensor, maps: torch.Tensor, split: Split, x: torch.Tensor, noise_std: float) -> dict:
    """Held-out error of reconstruction(s) ``x`` (..., H, W) complex, normalised units, made without
    ``split.val_mask``; y (C, H, W) the measured k-space (zeros off the full mask), maps (C, H, W).

    Per held-out position j (over coils and, for 1-D masks, the whole line): e_j = ||r_j||^2 - (entries) sigma^2,
    unbiased for the error energy there. Returns tensors over the leading dims of x: ``error`` sum_j e_j,
    ``unmeasured`` sum_j weights_j e_j (the estimated error energy of all positions outside the mask, module
    doc), ``per_position`` (..., n_val); ``signal`` ||y_V||^2 minus the noise; ``noise`` the noise energy
    expected on the held-out positions; ``noise_var`` the variance of ``error`` for a reconstruction that is
    exact on them (|n|^2 of a CN(0, sigma^2) entry is exponential, variance sigma^4: n sigma^4 over the n
    held-out entries), so sqrt(noise_var) is the smallest error the held-out positions resolve (the floor of
    ``ratio_estimate``); ``residual`` r = y - F S x on the held-out entries (..., C, n) complex (for the blend
    weight, ``blend_weight``)."""
    h = split.val_mask.shape[-2]
    idx = split.val_index.to(y.device)

    def at_positions(z):  # (..., C, H, W) -> (..., n_val) energy summed over coils (and lines for 1-D masks)
        e = (z.abs() ** 2).sum(-3)
        e = e.sum(-2, keepdim=True) if h == 1 else e
        return e.reshape(*e.shape[:-2], -1)[..., idx].double()

    noise = y.shape[-3] * (y.shape[-2] if h == 1 else 1) * float(noise_std) ** 2  # per position
    r = y - _predict(x, maps)
    per = at_positions(r) - noise
    signal = float(at_positions(y).sum()) - split.n_val * noise
    v = split.val_mask.reshape(split.val_mask.shape[-2:]).to(y.device).bool().expand(y.shape[-2:])
    return {"error": per.sum(-1), "unmeasured": (per * split.weights.to(per.device)).sum(-1), "per_position": per,
            "signal": signal, "noise": split.n_val * noise, "noise_var": split.n_val * noise * float(noise_std) ** 2,
            "residual": r[..., v]}


def blend_weight(r_a: torch.Tensor, r_b: torch.Tensor) -> float:
    """alpha in [0, 1] minimising ||alpha r_a + (1 - alpha) r_b||^2: the held-out residual of the blend
    alpha x_a + (1 - alpha) x_b (residuals are affine in x). Both residuals carry the same measurement noise,
    which cancels in r_a - r_b, so alpha = Re<r_b, r_b - r_a> / ||r_b - r_a||^2 (clipped) is not pulled by it;
    1 when the two predictions agree."""
    d = r_b - r_a
    den = float((d.abs() ** 2).sum())
    if den <= 0:
        return 1.0
    return min(1.0, max(0.0, float(torch.real((r_b.conj() * d).sum())) / den))


def spread_energy(samples: torch.Tensor, maps: torch.Tensor, mask_shape: tuple[int, ...]) -> torch.Tensor:
    """Per k-space position (the mask's (h, w): whole lines for 1-D masks), the error energy that K posterior
    ``samples`` (K, H, W) predict for their mean: s_j^2 (1 + 1/K), s_j^2 = sum_k ||F S (x_k - m)||_j^2 / (K - 1)
    (module doc). float64 (h * w,); NaN for K < 2."""
    K = samples.shape[0]
    h = mask_shape[-2]
    if K < 2:
        return torch.full((h * mask_shape[-1],), math.nan, dtype=torch.float64)
    e = (_predict(samples - samples.mean(0, keepdim=True), maps).abs() ** 2).sum((0, 1))  # (H, W)
    e = e.sum(0, keepdim=True) if h == 1 else e
    return e.reshape(-1).double() / (K - 1) * (1 + 1 / K)


def posterior_predicted(samples: torch.Tensor, maps: torch.Tensor, split: Split) -> float:
    """The error energy on the held-out positions that K posterior ``samples`` (K, H, W), made without them,
    predict for their mean (``spread_energy`` summed over ``split.val_index``). NaN for K < 2."""
    return float(spread_energy(samples, maps, tuple(split.val_mask.shape))[split.val_index].sum())


def expected_energy(x: torch.Tensor | None, samples: torch.Tensor, maps: torch.Tensor,
                    mask_shape: tuple[int, ...], spread: torch.Tensor | None = None) -> torch.Tensor:
    """Per k-space position (as ``spread_energy``), the error energy E||F S (x - x_true)||_j^2 that K posterior
    ``samples`` (K, H, W) expect for a reconstruction x (H, W) made independently of them. With m their mean,
    x_true ~ posterior and the unbiased spread s_j^2: E = ||F S (x - mu)||_j^2 + s_j^2 and
    E||F S (x - m)||_j^2 = ||F S (x - mu)||_j^2 + s_j^2 / K, so the unbiased estimate is
    ||F S (x - m)||_j^2 + s_j^2 (1 - 1/K). x None: the posterior mean m itself, whose expected error is
    ``spread_energy``, s_j^2 (1 + 1/K). float64 (h * w,); NaN for K < 2. ``spread``: ``spread_energy`` of the
    same samples when the caller has it (one posterior, several candidates).

    It is the auxiliary variable of each candidate's ratio estimate (``ratio_estimate``): a classical
    reconstruction's error is not distributed over k-space like the posterior's own spread (CG-SENSE's is
    largest where it leaves k-space empty, L1-wavelet's where it shrinks), but its distance from the posterior
    mean there follows it."""
    K = samples.shape[0]
    h = mask_shape[-2]
    if spread is None:
        spread = spread_energy(samples, maps, mask_shape)
    if K < 2 or x is None:
        return spread
    d = (_predict(x - samples.mean(0), maps).abs() ** 2).sum(0)  # (H, W)
    d = d.sum(0, keepdim=True) if h == 1 else d
    return d.reshape(-1).double() + spread * (1 - 1 / K) / (1 + 1 / K)


def magnitude_fraction(x: torch.Tensor | None, samples: torch.Tensor) -> float:
    """The share of a reconstruction's expected error that survives the magnitude, as the posterior sees it:
    sum_k || |x| - |x_k| ||^2 / sum_k ||x - x_k||^2 over K posterior ``samples`` (K, H, W) complex (x (H, W);
    None: their mean). fastMRI scores |x| against a magnitude (RSS) target, so a phase error costs nothing there,
    while the held-out estimate is of the complex error. In [0, 1] (reverse triangle inequality per pixel): 1 for
    errors in phase with the image, about 1/2 for small circular errors, 0 for pure phase errors. NaN for K < 2
    when x is None (no spread), or when x equals every sample."""
    x = samples.mean(0) if x is None else x  # K = 1: x is the sample, so den = 0 and the share is NaN
    den = float(((x - samples).abs() ** 2).sum())
    if not den > 0:
        return math.nan
    return float(((x.abs() - samples.abs()) ** 2).sum()) / den


def ratio_estimate(held_out_error: float, held_out_predicted: float, predicted_unmeasured: float,
                   floor: float = 0.0) -> float:
    """The error energy outside the mask by the ratio estimator: (held-out error / what the posterior predicted
    there) x what the full posterior predicts outside the mask.

    ``floor``: the held-out error's noise standard error (sqrt of ``validation_error``'s ``noise_var``, summed over
    the folds). Once the noise energy is subtracted, a held-out error can be <= 0 (a reconstruction within the
    noise, or a blank slice); the estimate then rests on the floor, the largest error the held-out positions
    cannot tell from none, instead of claiming a perfect image (an infinite PSNR).

    The posterior spread of a position tracks how hard it is to fill (its radius and the gap it sits in), so
    it serves as the auxiliary variable of a survey ratio estimator: on SIAT validation slices its rank
    correlation with the true PSNR is 0.88 against 0.32 for the stratified direct estimate (BENCHMARKS.md,
    "Unseen anatomy"). NaN when the prediction is unusable (K < 2, or zero)."""
    if not (held_out_predicted > 0 and math.isfinite(held_out_predicted) and math.isfinite(predicted_unmeasured)):
        return math.nan
    return max(held_out_error, floor) / held_out_predicted * predicted_unmeasured


def estimated_mse(unmeasured: float, shape: tuple[int, int]) -> float:
    """Per-pixel MSE of the whole image from the estimated error energy outside the mask (module doc), >= 0."""
    return max(float(unmeasured), 0.0) / (shape[0] * shape[1])


def estimated_psnr(mse: float, peak: float) -> float:
    """10 log10(peak^2 / mse) in dB; +inf for mse 0."""
    return math.inf if mse <= 0 else 10 * math.log10(peak ** 2 / mse)
