"""Evaluate fastMRI-format reconstructions against fastMRI targets: :func:`evaluate_dirs` composes the jobs of
this package (find the pairs, load each file once, compute the metrics, summarise, draw the panels and the
report) and writes, into ``out_dir``:

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
    self-contained report (see :mod:`recon.evaluation.report`).

Every output is written to a temp name in ``out_dir`` and moved into place
with ``os.replace``; nothing is written unless every volume was scored, and
existing outputs are never touched unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import skimage

from data_prep.fastmri_h5 import TARGET_KEYS
from mri_diffusion.atomic import atomic_write_text

from .. import metrics as M
from .. import uncertainty
from .load import read_prediction, read_target
from .pairs import (EvaluationError, EvaluationWarning, Item, check_coverage, collect_items, discover_method_dirs,
                    target_names)
from .panels import ShownPrediction, ShownTarget, build_panels
from .report import write_report
from .score import calibration_pixels, score_pair
from .summary import (SLICE_COLUMNS, STD_RULE, VOLUME_COLUMNS, calibration_rows, csv_text, protocol_description,
                      summarize)

#: Files written by :func:`evaluate_dirs` (key -> file name).
OUTPUT_FILES = {
    "metrics_csv": "metrics.csv",
    "slices_csv": "metrics_slices.csv",
    "json": "metrics.json",
    "report": "report.html",
}


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


def _check_outputs(out_dir: Path, overwrite: bool) -> dict[str, Path]:
    paths = {k: out_dir / name for k, name in OUTPUT_FILES.items()}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    return paths


@dataclass
class _Scored:
    """The scoring pass over all pairs: rows in item order, calibration pixels, what the panels need."""

    volume_rows: list = field(default_factory=list)
    slice_rows: list = field(default_factory=list)
    keys: set = field(default_factory=set)
    calibration: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    targets: dict = field(default_factory=dict)
    shown: list = field(default_factory=list)


def _score_all(items: Sequence[Item], target_dir: Path, protocol: str, target_key: Optional[str],
               allow_nan: bool) -> _Scored:
    """Read each target once and each prediction once (target by target, so memory holds one target and its
    predictions, plus the calibration pixels), and score every pair; rows keep the order of ``items``."""
    by_file: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_file.setdefault(it.path.name, []).append(i)
    rows: list = [None] * len(items)
    pixels: list = [None] * len(items)
    shown: list = [None] * len(items)
    out = _Scored()
    for name, idx in by_file.items():
        target = read_target(target_dir / name, target_key)
        out.targets[name] = ShownTarget.of(target)
        out.keys.add(target.key)
        for i in idx:
            pred = read_prediction(items[i])
            rows[i] = score_pair(target, pred, protocol, allow_nan)
            pixels[i] = (calibration_pixels(target, pred), pred.samples)
            shown[i] = ShownPrediction.of(pred)
    for it, (vol, sl), (px, samples) in zip(items, rows, pixels):
        out.volume_rows.append(vol)
        out.slice_rows.extend(sl)
        if px is not None:
            out.calibration.setdefault((it.method, it.acceleration), []).append(px)
            if samples is not None:
                out.samples[(it.method, it.acceleration)] = samples
    out.shown = shown
    return out


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
        title, extra_sections: passed to :func:`recon.evaluation.report.write_report`.

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
    items, notes, missing = check_coverage(collect_items(method_dirs), target_names(target_dir, keys), target_dir,
                                           keys, allow_missing)

    scored = _score_all(items, target_dir, protocol, target_key, allow_nan)
    volume_rows, slice_rows, keys = scored.volume_rows, scored.slice_rows, scored.keys
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
    unc = calibration_rows(scored.calibration, scored.samples)
    if unc:
        summary["uncertainty"] = unc
        extra_sections = list(extra_sections or []) + [("Uncertainty calibration", uncertainty.html_table(unc))]
    panels = build_panels(scored.shown, scored.targets, target_dir, target_key, slice_rows, panel_file, panel_slices)

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = _check_outputs(out_dir, overwrite)
    atomic_write_text(paths["metrics_csv"], csv_text(volume_rows, VOLUME_COLUMNS), overwrite=True)
    atomic_write_text(paths["slices_csv"], csv_text(slice_rows, SLICE_COLUMNS), overwrite=True)
    atomic_write_text(paths["json"], json.dumps(summary, indent=2, allow_nan=False) + "\n", overwrite=True)
    write_report(paths["report"], summary, volume_rows, panels, text, title=title,
                 extra_sections=extra_sections)
    return EvaluationResult(volume_rows, slice_rows, summary, paths)
