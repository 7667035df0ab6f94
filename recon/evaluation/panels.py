"""The report's image panels: per acceleration the best, median and worst slice by PSNR (mean over the methods),
the methods side by side with their error and posterior-std maps and sampling masks. Built from what the scoring
pass kept of each file (shapes, the target's grey scale, masks) and the one slice each panel shows, read back."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .. import metrics as M
from .load import Prediction, Target, guard_note, read_slice, read_slice_info, read_target
from .pairs import EvaluationError, EvaluationWarning, Item
from .summary import acc_sort


@dataclass(frozen=True)
class ShownTarget:
    """What a panel needs of a target once its data is released: file, dataset, shape, grey scale."""

    path: Path
    key: str
    shape: tuple
    vmax: float

    @classmethod
    def of(cls, t: Target) -> "ShownTarget":
        return cls(t.path, t.key, tuple(t.data.shape), t.vmax)


@dataclass(frozen=True)
class ShownPrediction:
    """What a panel needs of a prediction: its item, shapes and sampling mask."""

    item: Item
    shape: tuple
    std_shape: Optional[tuple]
    mask: Optional[np.ndarray]

    @classmethod
    def of(cls, p: Prediction) -> "ShownPrediction":
        return cls(p.item, tuple(p.reconstruction.shape), None if p.std is None else tuple(p.std.shape), p.mask)


def pick_slices(slice_rows: Sequence[Mapping[str, Any]], acc: Any) -> list[tuple[str, str, int]]:
    """(what, file, slice) of the best, median and worst slice by PSNR (mean over the methods at ``acc``; slices
    every method scored), duplicates dropped."""
    per: dict[tuple, list] = {}
    for r in slice_rows:
        if r["acceleration"] == acc and r["valid"] and r["psnr"] is not None:
            per.setdefault((r["file"], r["slice"]), []).append(r["psnr"])
    if not per:
        return []
    most = max(len(v) for v in per.values())
    keys = sorted((k for k, v in per.items() if len(v) == most), key=lambda k: (float(np.mean(per[k])), k))
    picks = [("best", keys[-1]), ("median", keys[len(keys) // 2]), ("worst", keys[0])]
    out, seen = [], set()
    for what, key in picks:
        if key not in seen:
            seen.add(key)
            out.append((f"{what} slice by PSNR", *key))
    return out


def build_panels(preds: Sequence[ShownPrediction], targets: Mapping[str, ShownTarget], target_dir: Path,
                 target_key: Optional[str], slice_rows: Sequence[Mapping[str, Any]], panel_file: Optional[str] = None,
                 panel_slices: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """Report panels (format: ``recon.evaluation.report``), per acceleration: the best, median and worst slice by
    PSNR (or ``panel_file`` at ``panel_slices``, default its middle slice), each method with its sampling mask."""
    lookup = {(r["method"], r["acceleration"], r["file"], r["slice"]): r for r in slice_rows}
    panels = []
    for acc in sorted({p.item.acceleration for p in preds}, key=acc_sort):
        picks = (pick_slices(slice_rows, acc) if panel_file is None
                 else [("", panel_file, s) for s in (panel_slices or [None])])
        for what, file, s in picks:
            t = targets.get(file) or ShownTarget.of(read_target(target_dir / file, target_key))
            crop = M.fastmri_crop_shape(t.shape)
            shown = sorted((p for p in preds if p.item.acceleration == acc and p.item.path.name == file),
                           key=lambda p: p.item.method)
            n = min([t.shape[0]] + [p.shape[0] for p in shown])  # --max-slices runs hold the first n
            s = n // 2 if s is None else int(s)
            if not 0 <= s < n:
                raise EvaluationError(f"panel slice {s} out of range for {file} ({n} slices)")
            row = []
            for p in shown:
                std = None
                if p.std_shape is not None and p.std_shape != p.shape:
                    warnings.warn(f"{p.item.path}: reconstruction_std shape {p.std_shape} differs from "
                                  f"reconstruction {p.shape}; std map not shown", EvaluationWarning)
                elif p.std_shape is not None:
                    std = M.center_crop(read_slice(p.item.path, "reconstruction_std", s), crop)
                r = lookup.get((p.item.method, p.item.acceleration, file, s), {})
                note = (f"slice PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}"
                        if r.get("valid") and r.get("psnr") is not None else "")
                guard = guard_note(read_slice_info(p.item.path, s))
                note = "; ".join(x for x in (note, guard) if x)
                row.append({"label": p.item.label, "std": std, "note": note, "mask": p.mask,
                            "image": M.center_crop(read_slice(p.item.path, "reconstruction", s), crop)})
            title = ", ".join(x for x in ("" if acc is None else f"R = {float(acc):g}", what) if x)
            panels.append({"file": file, "slice": s, "target": M.center_crop(read_slice(t.path, t.key, s), crop),
                           "recons": row, "title": title, "vmax": t.vmax})
    return panels
