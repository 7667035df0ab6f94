"""Compute the metrics of one (target, prediction) pair: per volume and per slice (``recon.metrics``, the fastMRI
protocol or per slice), NaN/Inf handling, and the pixels that the calibration of the posterior std pools."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np

from .. import metrics as M
from .load import Prediction, Target, crop_pair, guard_estimated_psnr, scored_target
from .pairs import EvaluationError, EvaluationWarning


def score_pair(target: Target, pred: Prediction, protocol: str, allow_nan: bool) -> tuple[dict, list[dict]]:
    """(volume row, slice rows) of one prediction against its target."""
    item = pred.item
    gt = scored_target(target.data, pred)
    gt_c, pred_c, crop = crop_pair(gt, pred.reconstruction, item, target.path)
    crop_s = f"{crop[0]}x{crop[1]}"
    base = {"method": item.method, "acceleration": item.acceleration, "file": item.path.name,
            "protocol": protocol, "crop": crop_s}
    bad = {name: M.nonfinite_slices(a) for name, a in (("prediction", pred_c), ("target", gt_c))}
    if any(bad.values()):
        where = "; ".join(f"{n} {item.path if n == 'prediction' else target.path} has NaN/Inf "
                          f"in slice(s) {s}" for n, s in bad.items() if s)
        if not allow_nan:
            raise EvaluationError(f"non-finite values in {item.path.name}: {where}")
        note = f"NaN/Inf: {where}"
        warnings.warn(f"{item.label} {item.path.name} marked invalid and excluded from means: {note}",
                      EvaluationWarning, stacklevel=4)
        bad_slices = set(bad["prediction"]) | set(bad["target"])
        vol = dict(base, slices=gt_c.shape[0], nmse=None, psnr=None, ssim=None, valid=False, note=note)
        sl = [dict(base, slice=i, nmse=None, psnr=None, ssim=None, valid=False,
                   note="NaN/Inf in this slice" if i in bad_slices else "volume invalid")
              for i in range(gt_c.shape[0])]
        return vol, sl
    try:
        vol_m = M.volume_metrics(gt_c, pred_c, protocol)
        per = M.slice_metrics(gt_c, pred_c, protocol)
    except ValueError as exc:
        raise EvaluationError(f"cannot score {item.path} against {target.path}: {exc}") from None
    vol = dict(base, slices=gt_c.shape[0], valid=True, note="", **vol_m)
    sl = []
    infos = pred.slice_info or []
    for i in range(gt_c.shape[0]):
        vals = {k: float(per[k][i]) for k in M.METRIC_NAMES}
        defined = not any(math.isnan(v) for v in vals.values())
        info = infos[i] if i < len(infos) and isinstance(infos[i], dict) else {}
        est = guard_estimated_psnr(info)
        guard = {"guard_choice": info.get("choice", ""), "ood_flag": "" if info.get("ood_flag") is None
                 else int(bool(info["ood_flag"])), "guard_est_psnr": "" if est is None else round(est, 3)}
        sl.append(dict(base, slice=i, valid=defined, **guard,
                       note="" if defined else "undefined for this slice (e.g. all-zero target slice)",
                       **{k: None if math.isnan(v) else v for k, v in vals.items()}))
    return vol, sl


def calibration_pixels(target: Target, pred: Prediction) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(target, reconstruction, std) inside the evaluation crop, for the calibration of ``reconstruction_std``;
    None without a usable std (none, another shape, NaN/Inf, or all zero: one posterior sample says nothing)."""
    if not pred.std_matches:
        return None
    gt = scored_target(target.data, pred)
    gt_c, pred_c, _ = M.fastmri_crop(gt, pred.reconstruction)
    _, std_c, _ = M.fastmri_crop(gt, pred.std)
    if not (np.all(np.isfinite(pred_c)) and np.all(np.isfinite(std_c))) or not np.any(std_c > 0):
        return None
    return gt_c, pred_c, std_c
