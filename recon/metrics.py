"""Image-quality metrics following the fastMRI evaluation protocol.

All functions take real-valued numpy arrays of shape ``(slices, H, W)`` (a 2-D
``(H, W)`` image is treated as one slice) holding the *reference* (``gt``,
the fully-sampled target) and the *prediction* (``pred``).

Two named protocols are provided:

``"fastmri"`` (default)
    Exactly what ``fastmri/evaluate.py`` (fastmri 0.3.0) computes, per volume:

    * ``data_range = gt.max()`` over the whole volume;
    * NMSE  = ``||gt - pred||^2 / ||gt||^2`` over the whole volume;
    * PSNR  = ``skimage.metrics.peak_signal_noise_ratio`` on the whole volume
      with that data_range;
    * SSIM  = mean over slices of the 2-D ``skimage.metrics.structural_similarity``
      (default ``win_size=7``) with the *volume* data_range.

``"slice"``
    Per-slice protocol: every slice is scored on its own, with its own maximum
    ``gt[i].max()`` as data_range (and its own NMSE normalisation), and the
    per-slice values are then averaged (arithmetic mean) over the slices.  This
    gives different numbers than ``"fastmri"`` whenever the slice maxima differ
    from the volume maximum.

Before scoring, fastMRI crops both the target and the prediction to a centred
``(W_t, W_t)`` square where ``W_t = target.shape[-1]`` (see
:func:`fastmri_crop`); the crop is *not* applied by the metric functions
themselves.

All metric functions validate their inputs and raise :class:`ValueError` with
a message naming the problem (shape mismatch, NaN/Inf, images smaller than the
SSIM window, all-zero target) instead of silently returning NaN.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "PROTOCOLS",
    "PROTOCOL_TEXT",
    "DATA_RANGE_RULE",
    "FASTMRI_CROP_RULE",
    "SSIM_WIN_SIZE",
    "METRIC_NAMES",
    "center_crop",
    "fastmri_crop_shape",
    "fastmri_crop",
    "nonfinite_slices",
    "check_pair",
    "nmse",
    "psnr",
    "ssim",
    "slice_metrics",
    "volume_metrics",
]

#: Names of the supported protocols.
PROTOCOLS = ("fastmri", "slice")

#: The metrics computed by :func:`volume_metrics`, in report order.
METRIC_NAMES = ("nmse", "psnr", "ssim")

#: SSIM window size (skimage default, used by fastMRI).
SSIM_WIN_SIZE = 7

#: Human-readable description of each protocol.
PROTOCOL_TEXT = {
    "fastmri": (
        "fastMRI protocol (fastmri/evaluate.py): each metric is computed per volume; "
        "NMSE = ||target - recon||^2 / ||target||^2 over the volume; PSNR from "
        "skimage peak_signal_noise_ratio on the whole volume; SSIM = mean over slices "
        "of 2-D skimage structural_similarity (win_size 7); data_range = maximum of "
        "the target volume for both PSNR and SSIM."
    ),
    "slice": (
        "Per-slice protocol: every slice is scored separately with its own target "
        "maximum as data_range (PSNR, SSIM with win_size 7) and its own NMSE "
        "normalisation ||target_slice||^2; the per-slice values are then averaged "
        "over the slices of the volume."
    ),
}

#: How data_range is chosen in each protocol.
DATA_RANGE_RULE = {
    "fastmri": "data_range = target.max() over the whole (cropped) volume",
    "slice": "data_range = target[slice].max() for each (cropped) slice",
}

#: The crop applied by fastmri/evaluate.py before scoring.
FASTMRI_CROP_RULE = (
    "centre crop of target and reconstruction to (W_t, W_t), W_t = width "
    "(last axis) of the target, as in fastmri/evaluate.py; a target shorter than "
    "W_t (e.g. 256 x 340 single-coil) keeps its own height: (min(H_t, W_t), W_t)"
)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def center_crop(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre-crop the last two axes of ``x`` to ``shape = (h, w)``.

    Same offsets as ``fastmri.data.transforms.center_crop``: the crop starts at
    ``(H - h) // 2`` and ``(W - w) // 2``.

    Args:
        x: array of shape ``(..., H, W)``.
        shape: target ``(h, w)`` with ``0 < h <= H`` and ``0 < w <= W``.

    Returns:
        A view of shape ``(..., h, w)``.

    Raises:
        ValueError: if the crop is larger than the image or not positive.
    """
    h, w = int(shape[0]), int(shape[1])
    if x.ndim < 2:
        raise ValueError(f"center_crop needs at least 2 dimensions, got shape {x.shape}")
    H, W = x.shape[-2], x.shape[-1]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(
            f"cannot centre-crop an image of shape {tuple(x.shape)} to {(h, w)}: "
            "crop must be positive and no larger than the image"
        )
    top = (H - h) // 2
    left = (W - w) // 2
    return x[..., top : top + h, left : left + w]


def fastmri_crop_shape(target_shape: Sequence[int]) -> tuple[int, int]:
    """The crop used by fastmri/evaluate.py for a target of shape ``(..., H, W)``.

    Returns ``(W, W)``: fastMRI crops the target to
    ``(target.shape[-1], target.shape[-1])`` and then the reconstruction to the
    (unchanged) width of the cropped target, i.e. the same square. A target
    shorter than it is wide (H < W, e.g. a 256 x 340 single-coil scan, where
    fastmri/evaluate.py's crop fails) gets ``(H, W)``: the crop is limited to
    the target's own shape, as fastMRI's data transforms crop to the target
    shape (``min(target shape, crop)`` per axis).
    """
    h, w = int(target_shape[-2]), int(target_shape[-1])
    return (min(h, w), w)


def fastmri_crop(
    gt: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Apply the fastMRI evaluation crop to a target/prediction pair.

    Args:
        gt: target, shape ``(slices, H_t, W_t)``.
        pred: prediction, shape ``(slices, H_p, W_p)`` at least as large as
            the crop (a larger, e.g. full field-of-view, prediction is cropped).

    Returns:
        ``(gt_cropped, pred_cropped, crop)`` with both arrays of shape
        ``(slices, *crop)``, ``crop = fastmri_crop_shape(gt.shape)``.

    Raises:
        ValueError: naming both shapes if either array is too small for the crop.
    """
    crop = fastmri_crop_shape(gt.shape)
    for name, arr in (("target", gt), ("prediction", pred)):
        if arr.ndim < 2 or arr.shape[-2] < crop[0] or arr.shape[-1] < crop[1]:
            raise ValueError(
                f"shape mismatch: {name} is too small for the fastMRI crop {crop} "
                f"(target shape {tuple(gt.shape)}, prediction shape {tuple(pred.shape)})"
            )
    return center_crop(gt, crop), center_crop(pred, crop), crop


def nonfinite_slices(x: np.ndarray) -> list[int]:
    """Indices of slices of ``x`` (shape ``(slices, H, W)``) holding NaN or Inf."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    bad = ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
    return [int(i) for i in np.flatnonzero(bad)]


def _as_volume(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a real floating array of shape ``(slices, H, W)``."""
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise ValueError(f"{name} is complex ({x.dtype}); metrics need real magnitude images")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (slices, H, W), got shape {x.shape}")
    return x


def check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a target/prediction pair and return them as ``(slices, H, W)`` arrays.

    The arrays are not copied or cast when they are already real floating point
    (so results match fastmri bit for bit).

    Raises:
        ValueError: complex or wrong number of dimensions; shapes differ (both
            shapes named); NaN/Inf in ``target``/``prediction`` (array and slices
            named); images smaller than the 7x7 SSIM window; all-zero (or
            non-positive maximum) target.
    """
    gt = _as_volume(gt, "target")
    pred = _as_volume(pred, "prediction")
    if gt.shape != pred.shape:
        raise ValueError(
            f"shape mismatch: target has shape {tuple(gt.shape)}, "
            f"prediction has shape {tuple(pred.shape)}"
        )
    for name, arr in (("target", gt), ("prediction", pred)):
        bad = nonfinite_slices(arr)
        if bad:
            raise ValueError(
                f"{name} contains NaN or Inf values (slices {bad}); "
                "refusing to average non-finite metrics"
            )
    h, w = gt.shape[-2:]
    if h < SSIM_WIN_SIZE or w < SSIM_WIN_SIZE:
        raise ValueError(
            f"images are {h}x{w} pixels, smaller than the {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} "
            "SSIM window; need at least 7x7"
        )
    if gt.shape[0] == 0:
        raise ValueError("target has no slices")
    if not gt.max() > 0:
        raise ValueError(
            f"target maximum is {gt.max()!r} (all-zero or non-positive target): "
            "data_range = target.max() must be > 0"
        )
    return gt, pred


def _slice_ranges(gt: np.ndarray, protocol: str, maxval: Optional[float]) -> list:
    """data_range for every slice of ``gt`` according to ``protocol``."""
    if maxval is not None:
        return [maxval] * gt.shape[0]
    if protocol == "fastmri":
        return [gt.max()] * gt.shape[0]
    ranges = [gt[i].max() for i in range(gt.shape[0])]
    zero = [i for i, r in enumerate(ranges) if not r > 0]
    if zero:
        raise ValueError(
            f"target slices {zero} are all-zero (maximum <= 0); the per-slice "
            "protocol needs data_range = slice maximum > 0"
        )
    return ranges


def _nmse_raw(gt: np.ndarray, pred: np.ndarray) -> float:
    """``||gt - pred||^2 / ||gt||^2`` exactly as fastmri computes it."""
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def slice_metrics(
    gt: np.ndarray, pred: np.ndarray, protocol: str = "fastmri", maxval: Optional[float] = None
) -> dict[str, np.ndarray]:
    """Metrics of every slice of a volume.

    Args:
        gt, pred: arrays of shape ``(slices, H, W)``.
        protocol: ``"fastmri"`` -> data_range = volume maximum for every slice
            (so the mean of the per-slice SSIM equals the fastMRI volume SSIM;
            the per-slice PSNR/NMSE are *not* what fastMRI reports per volume);
            ``"slice"`` -> data_range = each slice's own maximum.
        maxval: fixed data_range overriding the protocol's rule.

    Returns:
        ``{"nmse": (slices,), "psnr": (slices,), "ssim": (slices,)}`` float64
        arrays.  NMSE of a slice uses that slice's ``||gt_slice||^2`` (it is
        NaN/Inf for an all-zero target slice under the fastmri protocol).
    """
    _check_protocol(protocol)
    gt, pred = check_pair(gt, pred)
    ranges = _slice_ranges(gt, protocol, maxval)
    out = {k: np.empty(gt.shape[0]) for k in METRIC_NAMES}
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, dr in enumerate(ranges):
            out["nmse"][i] = _nmse_raw(gt[i], pred[i])
            out["psnr"][i] = peak_signal_noise_ratio(gt[i], pred[i], data_range=dr)
            out["ssim"][i] = structural_similarity(gt[i], pred[i], data_range=dr)
    return out


def nmse(gt: np.ndarray, pred: np.ndarray, *, protocol: str = "fastmri") -> float:
    """Normalised MSE of a volume ``(slices, H, W)``.

    ``"fastmri"``: ``||gt - pred||^2 / ||gt||^2`` over the whole volume.
    ``"slice"``: the same ratio per slice, averaged over slices.
    """
    _check_protocol(protocol)
    if protocol == "slice":
        return float(np.mean(slice_metrics(gt, pred, "slice")["nmse"]))
    gt, pred = check_pair(gt, pred)
    return _nmse_raw(gt, pred)


def psnr(
    gt: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None, *, protocol: str = "fastmri"
) -> float:
    """PSNR in dB of a volume ``(slices, H, W)``.

    ``"fastmri"``: skimage ``peak_signal_noise_ratio`` on the whole volume with
    ``data_range = maxval or gt.max()`` (volume maximum).
    ``"slice"``: per-slice PSNR with ``data_range = maxval or gt[i].max()``,
    averaged over slices.
    """
    _check_protocol(protocol)
    if protocol == "slice":
        return float(np.mean(slice_metrics(gt, pred, "slice", maxval)["psnr"]))
    gt, pred = check_pair(gt, pred)
    dr = gt.max() if maxval is None else maxval
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(gt, pred, data_range=dr))


def ssim(
    gt: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None, *, protocol: str = "fastmri"
) -> float:
    """SSIM of a volume ``(slices, H, W)``: mean of 2-D SSIM (win_size 7) over slices.

    ``"fastmri"``: every slice uses ``data_range = maxval or gt.max()`` (volume
    maximum).  ``"slice"``: slice ``i`` uses ``data_range = maxval or gt[i].max()``.
    """
    return float(np.mean(slice_metrics(gt, pred, protocol, maxval)["ssim"]))


def volume_metrics(gt: np.ndarray, pred: np.ndarray, protocol: str = "fastmri") -> dict[str, float]:
    """All metrics of one volume ``(slices, H, W)`` under ``protocol``.

    Returns:
        ``{"nmse": float, "psnr": float, "ssim": float}``.  Under ``"fastmri"``
        these equal ``fastmri.evaluate.nmse/psnr/ssim``; under ``"slice"`` they
        are the means of :func:`slice_metrics` with per-slice maxima.
    """
    _check_protocol(protocol)
    if protocol == "slice":
        per = slice_metrics(gt, pred, "slice")
        return {k: float(np.mean(per[k])) for k in METRIC_NAMES}
    gt, pred = check_pair(gt, pred)
    return {"nmse": nmse(gt, pred), "psnr": psnr(gt, pred), "ssim": ssim(gt, pred)}
