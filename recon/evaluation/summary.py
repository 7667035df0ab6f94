"""Summarise: per (method, acceleration) the mean and 2 std over volumes of each metric, the calibration of the
posterior std (pixels pooled over volumes), the protocol in words, and the CSV text of the row tables."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

from .. import metrics as M
from .. import uncertainty

VOLUME_COLUMNS = ("method", "acceleration", "file", "slices", "nmse", "psnr", "ssim",
                  "protocol", "crop", "valid", "note")
SLICE_COLUMNS = ("method", "acceleration", "file", "slice", "nmse", "psnr", "ssim",
                 "protocol", "crop", "valid", "note", "guard_choice", "ood_flag",
                 "guard_est_psnr")  # the last three: recon --method auto (guard_est_psnr: from k-space alone)

STD_RULE = ("2*std = twice the sample standard deviation (ddof=1) over the valid volumes, "
            "as printed by fastmri/evaluate.py (runstats)")


def nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def mean_2std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (ddof=1) and 2*std of ``values`` (None where undefined)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "two_std": None}
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return {"mean": nan_to_none(mean), "std": nan_to_none(std),
            "two_std": nan_to_none(2 * std) if std is not None else None}


def acc_sort(acc: Any) -> float:
    return -1.0 if acc is None else float(acc)


def summarize(volume_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, acceleration): n_volumes (valid), n_invalid and mean/std/two_std of each metric."""
    groups: dict[tuple, list] = {}
    for r in volume_rows:
        groups.setdefault((r["method"], r["acceleration"]), []).append(r)
    out = []
    for (method, acc), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], acc_sort(kv[0][1]))):
        valid = [r for r in rows if r["valid"]]
        g = {"method": method, "acceleration": acc, "n_volumes": len(valid),
             "n_invalid": len(rows) - len(valid), "files": sorted(r["file"] for r in rows)}
        for k in M.METRIC_NAMES:
            g[k] = mean_2std([r[k] for r in valid])
        out.append(g)
    return out


def calibration_rows(groups: Mapping[tuple, list], samples: Mapping[tuple, int]) -> list[dict]:
    """Calibration of ``reconstruction_std`` per (method, acceleration): ``groups`` maps it to the (target,
    reconstruction, std) pixels of its volumes (pooled), ``samples`` to the number of posterior samples."""
    rows = [{"method": m, "acceleration": a, **uncertainty.pooled(v), "samples": samples.get((m, a))}
            for (m, a), v in sorted(groups.items(), key=str)]
    return [{k: nan_to_none(v) for k, v in r.items()} for r in rows]


def protocol_description(protocol: str, reference_key: str) -> str:
    """One paragraph stating metric protocol, crop, reference key and data_range rule."""
    return (f"Metric protocol '{protocol}': {M.PROTOCOL_TEXT[protocol]} "
            f"Crop: {M.FASTMRI_CROP_RULE}. Reference: target dataset '{reference_key}' "
            f"of the fastMRI file with the same name. Data range: {M.DATA_RANGE_RULE[protocol]}. "
            f"Summary: mean and {STD_RULE}.")


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)  # inf (perfect reconstruction) kept as "inf"
    return str(v)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()
