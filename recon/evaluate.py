"""Evaluate fastMRI-format reconstructions against fastMRI targets.

:func:`evaluate_dirs` scores every prediction file (``<name>.h5`` with dataset
``reconstruction`` of shape ``(slices, H, W)``, optional
``reconstruction_std``, optional attrs ``method`` / ``acceleration``) against
the target file of the same name (dataset ``reconstruction_esc`` for
single-coil or ``reconstruction_rss`` for multi-coil files), after the fastMRI
centre crop to ``(W_t, W_t)``, and writes into ``out_dir``:

``metrics.csv``
    one row per volume (method, acceleration, file, slices, nmse, psnr, ssim,
    protocol, crop, valid, note);
``metrics_slices.csv``
    one row per slice (same columns with ``slice`` instead of ``slices``);
``metrics.json``
    summary: per method and acceleration the mean and 2*std over volumes,
    the number of volumes, the protocol in words, crop, reference key and
    data_range rule;
``report.html``
    self-contained report (see :mod:`recon.report`).

Every output is written to a temp name in ``out_dir`` and moved into place
with ``os.replace``; nothing is written unless every volume was scored, and
existing outputs are never touched unless ``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import h5py
import numpy as np
import skimage

from . import metrics as M
from . import uncertainty
from .coverage import check_coverage, target_names
from mri_diffusion.atomic import atomic_write_text

from .report import write_report

__all__ = [
    "EvaluationError",
    "EvaluationWarning",
    "EvaluationResult",
    "OUTPUT_FILES",
    "TARGET_KEYS",
    "VOLUME_COLUMNS",
    "SLICE_COLUMNS",
    "parse_method_label",
    "discover_method_dirs",
    "detect_target_key",
    "protocol_description",
    "summarize",
    "evaluate_dirs",
]

#: Files written by :func:`evaluate_dirs` (key -> file name).
OUTPUT_FILES = {
    "metrics_csv": "metrics.csv",
    "slices_csv": "metrics_slices.csv",
    "json": "metrics.json",
    "report": "report.html",
}

#: Reference datasets, in auto-detection order: single-coil fastMRI files hold
#: both ``reconstruction_esc`` and ``reconstruction_rss`` and are scored on ESC;
#: multi-coil files only hold ``reconstruction_rss``.
TARGET_KEYS = ("reconstruction_esc", "reconstruction_rss")

VOLUME_COLUMNS = ("method", "acceleration", "file", "slices", "nmse", "psnr", "ssim",
                  "protocol", "crop", "valid", "note")
SLICE_COLUMNS = ("method", "acceleration", "file", "slice", "nmse", "psnr", "ssim",
                 "protocol", "crop", "valid", "note")

STD_RULE = ("2*std = twice the sample standard deviation (ddof=1) over the valid volumes, "
            "as printed by fastmri/evaluate.py (runstats)")

_LABEL_RE = re.compile(r"^(?P<method>.+?)[_\-]R(?P<acc>\d+(?:\.\d+)?)$", re.IGNORECASE)


class EvaluationError(Exception):
    """A prediction cannot be scored (missing target, shape mismatch, NaN, ...)."""


class EvaluationWarning(UserWarning):
    """Something was skipped or excluded (e.g. an invalid volume with allow_nan)."""


@dataclass
class EvaluationResult:
    """What :func:`evaluate_dirs` computed and wrote.

    Attributes:
        volume_rows: one dict per volume (keys :data:`VOLUME_COLUMNS`).
        slice_rows: one dict per slice (keys :data:`SLICE_COLUMNS`).
        summary: the content of ``metrics.json``.
        paths: output key (see :data:`OUTPUT_FILES`) -> written path.
    """

    volume_rows: list[dict[str, Any]]
    slice_rows: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Item:
    """One prediction file to score."""

    method: str
    acceleration: Any
    path: Path

    @property
    def label(self) -> str:
        return self.method if self.acceleration is None else f"{self.method} R{self.acceleration}"


# ---------------------------------------------------------------- discovery


def _norm_acc(value: Any) -> Any:
    """Acceleration as int (if integral), float, or None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else None
        if value is None:
            return None
    try:
        f = float(str(value).strip().lstrip("Rr")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(f) if f.is_integer() else f


def parse_method_label(label: str) -> tuple[str, Any]:
    """Split a folder label such as ``"zero-filled_R4"`` into ``("zero-filled", 4)``.

    Labels without an ``_R<n>`` / ``-R<n>`` suffix give ``(label, None)``.
    """
    m = _LABEL_RE.match(label)
    if not m:
        return label, None
    return m.group("method"), _norm_acc(m.group("acc"))


def _h5_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file()
                  and not p.name.startswith("."))


def discover_method_dirs(pred_dirs: Union[Mapping[str, Union[str, Path]], str, Path]) -> list[tuple[str, Path]]:
    """Resolve the prediction folders to ``[(label, folder), ...]``.

    * a mapping ``name -> folder``: each folder holds ``.h5`` files of one method;
    * a single folder holding ``.h5`` files: one method labelled by the folder name;
    * a single folder without ``.h5`` files: every sub-folder holding ``.h5``
      files is one method, labelled by the sub-folder name.

    Raises:
        EvaluationError: a folder is missing or holds no prediction files.
    """
    if isinstance(pred_dirs, Mapping):
        out = []
        for name, folder in pred_dirs.items():
            folder = Path(folder)
            if not folder.is_dir():
                raise EvaluationError(f"prediction folder {folder} (method {name!r}) does not exist")
            if not _h5_files(folder):
                raise EvaluationError(f"prediction folder {folder} (method {name!r}) holds no .h5 files")
            out.append((str(name), folder))
        if not out:
            raise EvaluationError("no prediction folders given")
        return out
    folder = Path(pred_dirs)
    if not folder.is_dir():
        raise EvaluationError(f"prediction folder {folder} does not exist")
    if _h5_files(folder):
        return [(folder.name, folder)]
    subs = [(d.name, d) for d in sorted(folder.iterdir()) if d.is_dir() and _h5_files(d)]
    if not subs:
        raise EvaluationError(f"{folder} holds no .h5 prediction files and no method sub-folders with .h5 files")
    return subs


def _attr(attrs: Any, key: str) -> Any:
    if key not in attrs:
        return None
    v = attrs[key]
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.item()
    return v


def _collect_items(method_dirs: Sequence[tuple[str, Path]]) -> list[_Item]:
    """Every prediction file with its method and acceleration (file attrs win over the folder label)."""
    items, seen = [], {}
    for label, folder in method_dirs:
        folder_method, folder_acc = parse_method_label(label)
        for path in _h5_files(folder):
            with h5py.File(path, "r") as f:
                method = _attr(f.attrs, "method")
                acc = _norm_acc(_attr(f.attrs, "acceleration"))
            item = _Item(str(method) if method not in (None, "") else folder_method,
                         acc if acc is not None else folder_acc, path)
            key = (item.method, item.acceleration, path.name)
            if key in seen:
                raise EvaluationError(
                    f"duplicate prediction for method {item.method!r}, acceleration "
                    f"{item.acceleration!r}, file {path.name}: {seen[key]} and {path}")
            seen[key] = path
            items.append(item)
    return items


# ------------------------------------------------------------------- reading


def detect_target_key(f: h5py.File, target_key: Optional[str] = None) -> str:
    """The reference dataset of an open target file.

    ``target_key`` if given (must exist), else ``reconstruction_esc`` when
    present (single-coil file), else ``reconstruction_rss`` (multi-coil).
    """
    keys = [target_key] if target_key else list(TARGET_KEYS)
    for k in keys:
        if k in f:
            return k
    raise EvaluationError(
        f"target {f.filename} has none of the datasets {keys}; it holds {sorted(f.keys())}")


def _read_pred(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``reconstruction`` (slices, H, W) and optional ``reconstruction_std`` of a prediction file."""
    with h5py.File(path, "r") as f:
        if "reconstruction" not in f:
            raise EvaluationError(f"{path} has no 'reconstruction' dataset (holds {sorted(f.keys())})")
        rec = f["reconstruction"][()]
        std = f["reconstruction_std"][()] if "reconstruction_std" in f else None
    if np.iscomplexobj(rec):
        raise EvaluationError(f"{path}: 'reconstruction' is complex ({rec.dtype}); expected magnitude images")
    if rec.ndim != 3:
        raise EvaluationError(f"{path}: 'reconstruction' must be (slices, H, W), got shape {rec.shape}")
    return rec, std


def _read_target(path: Path, target_key: Optional[str]) -> tuple[np.ndarray, str]:
    with h5py.File(path, "r") as f:
        key = detect_target_key(f, target_key)
        gt = f[key][()]
    if gt.ndim != 3:
        raise EvaluationError(f"target {path}: {key!r} must be (slices, H, W), got shape {gt.shape}")
    return gt, key


def _first_slices(gt: np.ndarray, pred: np.ndarray, pred_path: Path) -> np.ndarray:
    """A reconstruction of the first n slices only (``recon --max-slices``, attr ``first_slices``) is scored
    against the first n target slices; anything else keeps the full target (and fails on a mismatch)."""
    with h5py.File(pred_path, "r") as f:
        n = f.attrs.get("first_slices")
    if n is not None and int(n) == pred.shape[0] < gt.shape[0]:
        return gt[: int(n)]
    return gt


def _crop_pair(gt: np.ndarray, pred: np.ndarray, item: _Item, target_path: Path):
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


# ------------------------------------------------------------------- scoring


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _score_item(item: _Item, target_dir: Path, protocol: str, target_key: Optional[str],
                allow_nan: bool) -> tuple[dict, list[dict], str]:
    """Score one prediction file; returns (volume row, slice rows, reference key used)."""
    target_path = target_dir / item.path.name
    gt, key = _read_target(target_path, target_key)
    pred, _ = _read_pred(item.path)
    gt = _first_slices(gt, pred, item.path)
    gt_c, pred_c, crop = _crop_pair(gt, pred, item, target_path)
    crop_s = f"{crop[0]}x{crop[1]}"
    base = {"method": item.method, "acceleration": item.acceleration, "file": item.path.name,
            "protocol": protocol, "crop": crop_s}
    bad = {name: M.nonfinite_slices(a) for name, a in (("prediction", pred_c), ("target", gt_c))}
    if any(bad.values()):
        where = "; ".join(f"{n} {item.path if n == 'prediction' else target_path} has NaN/Inf "
                          f"in slice(s) {s}" for n, s in bad.items() if s)
        if not allow_nan:
            raise EvaluationError(f"non-finite values in {item.path.name}: {where}")
        note = f"NaN/Inf: {where}"
        warnings.warn(f"{item.label} {item.path.name} marked invalid and excluded from means: {note}",
                      EvaluationWarning, stacklevel=3)
        bad_slices = set(bad["prediction"]) | set(bad["target"])
        vol = dict(base, slices=gt_c.shape[0], nmse=None, psnr=None, ssim=None, valid=False, note=note)
        sl = [dict(base, slice=i, nmse=None, psnr=None, ssim=None, valid=False,
                   note="NaN/Inf in this slice" if i in bad_slices else "volume invalid")
              for i in range(gt_c.shape[0])]
        return vol, sl, key
    try:
        vol_m = M.volume_metrics(gt_c, pred_c, protocol)
        per = M.slice_metrics(gt_c, pred_c, protocol)
    except ValueError as exc:
        raise EvaluationError(f"cannot score {item.path} against {target_path}: {exc}") from None
    vol = dict(base, slices=gt_c.shape[0], valid=True, note="", **vol_m)
    sl = []
    for i in range(gt_c.shape[0]):
        vals = {k: float(per[k][i]) for k in M.METRIC_NAMES}
        defined = not any(math.isnan(v) for v in vals.values())
        sl.append(dict(base, slice=i, valid=defined,
                       note="" if defined else "undefined for this slice (e.g. all-zero target slice)",
                       **{k: None if math.isnan(v) else v for k, v in vals.items()}))
    return vol, sl, key


def _uncertainty(items: Sequence[_Item], target_dir: Path, target_key: Optional[str]) -> list[dict]:
    """Calibration of ``reconstruction_std`` per method and acceleration (pixels pooled over volumes)."""
    groups: dict[tuple, list] = {}
    samples: dict[tuple, int] = {}
    for it in items:
        pred, std = _read_pred(it.path)
        if std is None or std.shape != pred.shape:
            continue
        gt, _ = _read_target(target_dir / it.path.name, target_key)
        gt = _first_slices(gt, pred, it.path)
        gt_c, pred_c, _ = M.fastmri_crop(gt, pred)
        _, std_c, _ = M.fastmri_crop(gt, std)
        if not (np.all(np.isfinite(pred_c)) and np.all(np.isfinite(std_c))) or not np.any(std_c > 0):
            continue  # one posterior sample (std 0) says nothing about calibration
        groups.setdefault((it.method, it.acceleration), []).append((gt_c, pred_c, std_c))
        with h5py.File(it.path, "r") as f:
            if "samples" in f.attrs:
                samples[(it.method, it.acceleration)] = int(f.attrs["samples"])
    rows = [{"method": m, "acceleration": a, **uncertainty.pooled(v), "samples": samples.get((m, a))}
            for (m, a), v in sorted(groups.items(), key=str)]
    return [{k: _nan_to_none(v) for k, v in r.items()} for r in rows]


def _mean_2std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (ddof=1) and 2*std of ``values`` (None where undefined)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "two_std": None}
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return {"mean": _nan_to_none(mean), "std": _nan_to_none(std),
            "two_std": _nan_to_none(2 * std) if std is not None else None}


def _acc_sort(acc: Any) -> float:
    return -1.0 if acc is None else float(acc)


def summarize(volume_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, acceleration): n_volumes (valid), n_invalid and mean/std/two_std of each metric."""
    groups: dict[tuple, list] = {}
    for r in volume_rows:
        groups.setdefault((r["method"], r["acceleration"]), []).append(r)
    out = []
    for (method, acc), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], _acc_sort(kv[0][1]))):
        valid = [r for r in rows if r["valid"]]
        g = {"method": method, "acceleration": acc, "n_volumes": len(valid),
             "n_invalid": len(rows) - len(valid), "files": sorted(r["file"] for r in rows)}
        for k in M.METRIC_NAMES:
            g[k] = _mean_2std([r[k] for r in valid])
        out.append(g)
    return out


def protocol_description(protocol: str, reference_key: str) -> str:
    """One paragraph stating metric protocol, crop, reference key and data_range rule."""
    return (f"Metric protocol '{protocol}': {M.PROTOCOL_TEXT[protocol]} "
            f"Crop: {M.FASTMRI_CROP_RULE}. Reference: target dataset '{reference_key}' "
            f"of the fastMRI file with the same name. Data range: {M.DATA_RANGE_RULE[protocol]}. "
            f"Summary: mean and {STD_RULE}.")


# ------------------------------------------------------------------- panels


def _pick_slices(slice_rows: Sequence[Mapping[str, Any]], acc: Any) -> list[tuple[str, str, int]]:
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


def _build_panels(items: Sequence[_Item], target_dir: Path, target_key: Optional[str],
                  slice_rows: Sequence[Mapping[str, Any]], panel_file: Optional[str] = None,
                  panel_slices: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """Report panels, per acceleration: the best, median and worst slice by PSNR (or ``panel_file`` at
    ``panel_slices``, default its middle slice), the methods side by side, each with its own sampling mask."""
    lookup = {(r["method"], r["acceleration"], r["file"], r["slice"]): r for r in slice_rows}
    panels = []
    for acc in sorted({it.acceleration for it in items}, key=_acc_sort):
        picks = (_pick_slices(slice_rows, acc) if panel_file is None
                 else [("", panel_file, s) for s in (panel_slices or [None])])
        for what, file, s in picks:
            gt, _ = _read_target(target_dir / file, target_key)
            crop = M.fastmri_crop_shape(gt.shape)
            gt_c = M.center_crop(gt, crop)
            recs = []
            for it in sorted((it for it in items if it.acceleration == acc and it.path.name == file),
                             key=lambda it: it.method):
                pred, std = _read_pred(it.path)
                if std is not None and std.shape != pred.shape:
                    warnings.warn(f"{it.path}: reconstruction_std shape {std.shape} differs from "
                                  f"reconstruction {pred.shape}; std map not shown", EvaluationWarning)
                    std = None
                recs.append((it, M.center_crop(pred, crop), None if std is None else M.center_crop(std, crop)))
            n = min([gt_c.shape[0]] + [p.shape[0] for _, p, _ in recs])  # --max-slices runs hold the first n
            s = n // 2 if s is None else int(s)
            if not 0 <= s < n:
                raise EvaluationError(f"panel slice {s} out of range for {file} ({n} slices)")
            row = []
            for it, pred_c, std_c in recs:
                r = lookup.get((it.method, it.acceleration, file, s), {})
                note = (f"slice PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}"
                        if r.get("valid") and r.get("psnr") is not None else "")
                row.append({"label": it.label, "image": pred_c[s], "std": None if std_c is None else std_c[s],
                            "note": note, "mask": _read_mask(it.path)})
            title = ", ".join(t for t in ("" if acc is None else f"R = {float(acc):g}", what) if t)
            panels.append({"file": file, "slice": s, "target": gt_c[s], "recons": row, "title": title,
                           "vmax": float(np.nanmax(gt_c)) if np.isfinite(gt_c).any() else 1.0})
    return panels


def _read_mask(path: Path) -> Optional[np.ndarray]:
    """The sampling mask a reconstruction file records (``mask``: (W,) or (H, W)), if any."""
    with h5py.File(path, "r") as f:
        if "mask" not in f:
            return None
        m = np.squeeze(np.asarray(f["mask"][()]))
    return m.astype(np.float32) if m.ndim in (1, 2) and m.size > 1 else None


# ------------------------------------------------------------------- writing


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)  # inf (perfect reconstruction) kept as "inf"
    return str(v)


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _check_outputs(out_dir: Path, overwrite: bool) -> dict[str, Path]:
    paths = {k: out_dir / name for k, name in OUTPUT_FILES.items()}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    return paths


# ---------------------------------------------------------------------- API


def evaluate_dirs(
    pred_dirs: Union[Mapping[str, Union[str, Path]], str, Path],
    target_dir: Union[str, Path],
    out_dir: Union[str, Path],
    protocol: str = "fastmri",
    target_key: Optional[str] = None,
    overwrite: bool = False,
    allow_nan: bool = False,
    allow_missing: bool = False,
    panel_file: Optional[str] = None,
    panel_slices: Optional[Sequence[int]] = None,
    title: str = "MRI reconstruction evaluation",
    extra_sections: Optional[Sequence[tuple[str, str]]] = None,
) -> EvaluationResult:
    """Score fastMRI submission folders and write metrics + an HTML report.

    Args:
        pred_dirs: ``{method label: folder}``, or one folder of ``.h5`` files,
            or one parent folder whose sub-folders (e.g. ``sense_R4/``) are
            methods.  Method/acceleration come from the file attrs ``method`` /
            ``acceleration``, else from the label (``<method>_R<acc>``).
        target_dir: folder of fastMRI target files, matched by file name.
        out_dir: output folder (created if missing).
        protocol: ``"fastmri"`` (volume maximum, fastmri/evaluate.py) or
            ``"slice"`` (per-slice maximum, averaged over slices).
        target_key: reference dataset; default auto: ``reconstruction_esc``
            if present (single-coil) else ``reconstruction_rss`` (multi-coil).
        overwrite: replace existing outputs; otherwise FileExistsError.
        allow_nan: mark volumes with NaN/Inf invalid (excluded from means,
            EvaluationWarning) instead of raising EvaluationError.
        allow_missing: score the pairs that exist when a method lacks a
            prediction for a target (or a prediction has no target); the
            missing pairs are named in the notes and ``summary['missing']``.
            Without it they raise EvaluationError naming them.
        panel_file: file shown in the report (default: per acceleration the
            best, median and worst slice by PSNR over all files).
        panel_slices: slice indices of ``panel_file`` (default: the middle one).
        title, extra_sections: passed to :func:`recon.report.write_report`.

    Returns:
        :class:`EvaluationResult`.

    Raises:
        EvaluationError: missing pairs (named) unless ``allow_missing``,
            shape mismatch (file and both shapes), NaN/Inf (file and slices) unless ``allow_nan``,
            unreadable/empty folders, mixed reference keys.
        FileExistsError: an output exists and ``overwrite`` is False (nothing
            is modified).
        ValueError: unknown protocol.
    """
    if protocol not in M.PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {M.PROTOCOLS}")
    target_dir, out_dir = Path(target_dir), Path(out_dir)
    paths = _check_outputs(out_dir, overwrite)
    if not target_dir.is_dir():
        raise EvaluationError(f"target folder {target_dir} does not exist")
    method_dirs = discover_method_dirs(pred_dirs)
    keys = [target_key] if target_key else list(TARGET_KEYS)
    items, notes, missing = check_coverage(_collect_items(method_dirs), target_names(target_dir, keys), target_dir,
                                           keys, allow_missing, EvaluationError)

    volume_rows, slice_rows, keys = [], [], set()
    for it in items:
        vol, sl, key = _score_item(it, target_dir, protocol, target_key, allow_nan)
        volume_rows.append(vol)
        slice_rows.extend(sl)
        keys.add(key)
    if len(keys) > 1:
        raise EvaluationError(f"targets use different reference datasets {sorted(keys)} "
                              "(mixed single-/multi-coil); pass target_key explicitly")
    ref_key = keys.pop()

    groups = summarize(volume_rows)
    for note in notes:
        warnings.warn(note, EvaluationWarning, stacklevel=2)
    n_invalid = sum(not r["valid"] for r in volume_rows)
    if n_invalid:
        notes.append(f"{n_invalid} volume(s) marked invalid (NaN/Inf) and excluded from the means")
    text = protocol_description(protocol, ref_key)
    summary = {
        "protocol": protocol,
        "protocol_text": M.PROTOCOL_TEXT[protocol],
        "description": text,
        "crop": M.FASTMRI_CROP_RULE,
        "reference_key": ref_key,
        "data_range_rule": M.DATA_RANGE_RULE[protocol],
        "std_rule": STD_RULE,
        "ssim_win_size": M.SSIM_WIN_SIZE,
        "skimage_version": skimage.__version__,
        "target_dir": str(target_dir),
        "prediction_dirs": {label: str(p) for label, p in method_dirs},
        "n_volume_rows": len(volume_rows),
        "n_invalid": n_invalid,
        "allow_missing": allow_missing,
        "missing": missing,
        "notes": notes,
        "groups": groups,
    }
    unc = _uncertainty(items, target_dir, target_key)
    if unc:
        summary["uncertainty"] = unc
        extra_sections = list(extra_sections or []) + [("Uncertainty calibration", uncertainty.html_table(unc))]
    panels = _build_panels(items, target_dir, target_key, slice_rows, panel_file, panel_slices)

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = _check_outputs(out_dir, overwrite)
    atomic_write_text(paths["metrics_csv"], _csv_text(volume_rows, VOLUME_COLUMNS), overwrite=True)
    atomic_write_text(paths["slices_csv"], _csv_text(slice_rows, SLICE_COLUMNS), overwrite=True)
    atomic_write_text(paths["json"], json.dumps(summary, indent=2, allow_nan=False) + "\n", overwrite=True)
    write_report(paths["report"], summary, volume_rows, panels, text, title=title,
                 extra_sections=extra_sections)
    return EvaluationResult(volume_rows, slice_rows, summary, paths)
