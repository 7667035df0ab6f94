"""Load each file once: a target volume, and every prediction file with all it holds (reconstruction, posterior
std, sampling mask, the attrs that matter for scoring), in one read per file. The panels of the report then read
back only the one slice they show (:func:`read_slice`).

The reference dataset is chosen as everywhere in the project (``data_prep.fastmri_h5.TARGET_KEYS``, the fastMRI
convention): ``reconstruction_esc`` when present (single-coil files hold both), else ``reconstruction_rss``
(multi-coil files hold only it); ``target_key`` overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from data_prep.fastmri_h5 import TARGET_KEYS, target_key as _target_key

from .. import metrics as M
from .pairs import EvaluationError, Item


@dataclass
class Target:
    """A target volume: file, reference dataset, data (slices, H, W) as stored."""

    path: Path
    key: str
    data: np.ndarray

    @property
    def vmax(self) -> float:
        """The report's grey scale: the maximum of the volume inside the evaluation crop (1 if nothing is finite)."""
        gt_c = M.center_crop(self.data, M.fastmri_crop_shape(self.data.shape))
        return float(np.nanmax(gt_c)) if np.isfinite(gt_c).any() else 1.0


@dataclass
class Prediction:
    """One prediction file: ``reconstruction`` (slices, H, W), optional ``reconstruction_std`` and sampling
    ``mask`` ((W,) or (H, W)), and the attrs ``first_slices`` (``recon --max-slices``) and ``samples``."""

    item: Item
    reconstruction: np.ndarray
    std: Optional[np.ndarray]
    mask: Optional[np.ndarray]
    first_slices: Optional[int]
    samples: Optional[int]
    slice_info: Optional[list] = None  # per-slice records of a guarded reconstruction (attr 'slice_info')

    @property
    def std_matches(self) -> bool:
        return self.std is not None and self.std.shape == self.reconstruction.shape


def detect_target_key(f: h5py.File, target_key: Optional[str] = None) -> str:
    """The reference dataset of an open target file: ``target_key`` if given (must exist), else the first of
    ``TARGET_KEYS`` present (``reconstruction_esc``, then ``reconstruction_rss``)."""
    key = _target_key(f, target_key)
    if key is None:
        keys = [target_key] if target_key else list(TARGET_KEYS)
        raise EvaluationError(f"target {f.filename} has none of the datasets {keys}; it holds {sorted(f.keys())}")
    return key


def read_target(path: Path, target_key: Optional[str]) -> Target:
    with h5py.File(path, "r") as f:
        key = detect_target_key(f, target_key)
        gt = f[key][()]
    if gt.ndim != 3:
        raise EvaluationError(f"target {path}: {key!r} must be (slices, H, W), got shape {gt.shape}")
    return Target(path, key, gt)


def _mask(f: h5py.File) -> Optional[np.ndarray]:
    if "mask" not in f:
        return None
    m = np.squeeze(np.asarray(f["mask"][()]))
    return m.astype(np.float32) if m.ndim in (1, 2) and m.size > 1 else None


def read_prediction(item: Item) -> Prediction:
    """Everything of a prediction file in one read; EvaluationError for a file that cannot be scored."""
    path = item.path
    with h5py.File(path, "r") as f:
        if "reconstruction" not in f:
            raise EvaluationError(f"{path} has no 'reconstruction' dataset (holds {sorted(f.keys())})")
        rec = f["reconstruction"][()]
        std = f["reconstruction_std"][()] if "reconstruction_std" in f else None
        first = f.attrs.get("first_slices")
        samples = int(f.attrs["samples"]) if "samples" in f.attrs else None
        mask = _mask(f)
        info = _slice_info(f.attrs.get("slice_info"))
    if np.iscomplexobj(rec):
        raise EvaluationError(f"{path}: 'reconstruction' is complex ({rec.dtype}); expected magnitude images")
    if rec.ndim != 3:
        raise EvaluationError(f"{path}: 'reconstruction' must be (slices, H, W), got shape {rec.shape}")
    return Prediction(item, rec, std, mask, None if first is None else int(first), samples, info)


def scored_target(gt: np.ndarray, pred: Prediction) -> np.ndarray:
    """A reconstruction of the first n slices only (``recon --max-slices``, attr ``first_slices``) is scored
    against the first n target slices; anything else keeps the full target (and fails on a mismatch)."""
    n = pred.first_slices
    if n is not None and n == pred.reconstruction.shape[0] < gt.shape[0]:
        return gt[:n]
    return gt


def crop_pair(gt: np.ndarray, pred: np.ndarray, item: Item, target_path: Path):
    """Evaluation crop of a pair (``metrics.fastmri_crop``); EvaluationError naming the file and what differs."""
    if gt.shape[0] != pred.shape[0]:
        raise EvaluationError(
            f"{item.path}: prediction shape {tuple(pred.shape)} has {pred.shape[0]} slices, target "
            f"{target_path} shape {tuple(gt.shape)} has {gt.shape[0]}")
    try:
        return M.fastmri_crop(gt, pred)
    except ValueError:
        raise EvaluationError(
            f"{item.path}: prediction shape {tuple(pred.shape)} is smaller than the evaluation crop "
            f"{M.fastmri_crop_shape(gt.shape)} of target {target_path} shape {tuple(gt.shape)}") from None


def read_slice(path: Path, key: str, index: int) -> np.ndarray:
    """One slice (H, W) of dataset ``key`` (for the report's panels)."""
    with h5py.File(path, "r") as f:
        return f[key][index]


def _slice_info(raw) -> Optional[list]:
    """The attr ``slice_info`` (JSON list, one record or null per slice) or None when absent or unreadable."""
    import json

    if raw is None:
        return None
    try:
        infos = json.loads(raw)
    except ValueError:
        return None
    return infos if isinstance(infos, list) else None


def read_slice_info(path: Path, index: int) -> Optional[dict]:
    """The per-slice record of a guarded reconstruction (attr ``slice_info``, ``recon.guard``) or None."""
    with h5py.File(path, "r") as f:
        infos = _slice_info(f.attrs.get("slice_info"))
    return infos[index] if infos is not None and 0 <= index < len(infos) else None


def guard_estimated_psnr(info: Optional[dict]) -> Optional[float]:
    """The guard's estimate of the written image's PSNR from the measurements alone (``est_psnr`` of its choice,
    ``recon.guard``: held-out k-space, the CG-SENSE image's slice maximum as range), or None where it has none
    (no held-out lines, one posterior sample, a classical mix)."""
    if not info:
        return None
    v = (info.get("est_psnr") or {}).get(info.get("choice"))
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def guard_note(info: Optional[dict]) -> str:
    """One line for a report panel: what the guard chose, its PSNR estimate, and whether the slice was flagged."""
    if not info:
        return ""
    flag = info.get("ood_flag")
    text = f"guard chose {info.get('choice', '?')}"
    est = guard_estimated_psnr(info)
    if est is not None:
        text += f" (estimated {est:.1f} dB PSNR from held-out k-space, slice maximum as range)"
    nan = float("nan")
    if flag:
        score = info.get("ood_score_ratio", nan)
        text += ("; OUT-OF-DISTRIBUTION FLAG: "
                 + (f"the prior's denoiser changes this slice {score:.1f} x as much as its own validation slices; "
                    if score == score else "")
                 + f"the prior's held-out error is {info.get('ood_db', nan):+.1f} dB against the best classical, "
                 f"{info.get('calibration_ratio', nan):.1f} x what its std predicts (the std map includes the "
                 "disagreement)")
    elif flag is None:
        text += " (unvalidated: no held-out lines)"
    return text

