"""Self-contained HTML evaluation report.

The report is ONE html file with inline CSS and every image embedded as a
base64 PNG data URI (written by matplotlib's ``imsave`` / Agg ``savefig``; no
pyplot and no global backend switch), so it can be opened from disk or mailed
around without a server or network access.  Image panels are HTML grids of
one-PNG-per-image (pixel exact, fast) with colour bars and a caption stating
the fixed colour scales.

The PNG / HTML builders are in :mod:`recon.evaluation.html`; :func:`summary_text` is the same summary as plain
text for the terminal.

Panel format accepted by :func:`write_report` (one dict per displayed slice and acceleration; ``evaluate``
shows the best, median and worst slice by PSNR at each acceleration)::

    {
        "file": "file1000.h5", "slice": 7,
        "target": (H, W) array, "vmax": float,        # colour scale 0..vmax
        "recons": [
            {"label": "sense R4", "image": (H, W) array,
             "std": (H, W) array or None,             # posterior std, optional
             "note": "PSNR 31.2 dB, SSIM 0.81",       # optional title suffix
             "mask": (W,) or (H, W) array or None},   # optional sampling mask, shown in its own row
            ...
        ],
        "err_vmax": float,   # optional; default: largest 99.5th percentile
                             # of |recon - target| over the methods in the row
        "title": "R = 4, worst slice by PSNR",  # optional, appended to the caption
    }
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from mri_diffusion.atomic import atomic_write_text

from .html import IMAGE_CMAP, colorbar_png, fmt, format_mean_2std, html_table, image_data_uri, img_tag, png_data_uri

__all__ = ["error_scale", "panel_html", "render_report", "write_report", "summary_text"]

ERROR_PERCENTILE = 99.5
ERROR_CMAP = "inferno"

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #444;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
p.protocol{background:#f4f6f8;border-left:4px solid #5b7fa3;padding:.6em .9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#eef1f4}
td.l,th.l{text-align:left}
tr.invalid td{color:#a33;background:#fff3f3}
table.panel td,table.panel th{border:none;text-align:center;vertical-align:top;padding:.2em}
table.panel img{width:170px;height:auto;image-rendering:pixelated;border:1px solid #ddd}
table.panel .cap{font-size:.8em;color:#444;max-width:170px}
figure{overflow-x:auto;margin:1em 0 2em 0}
.cbar img{width:160px;height:10px;vertical-align:middle;image-rendering:auto}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
.small{font-size:.85em;color:#555}
"""


# ----------------------------------------------------------------------- images


# ------------------------------------------------------------------------ tables


def _acc_text(acc: Any) -> str:
    if acc is None or acc == "":
        return "&ndash;"
    return html.escape(f"R={acc}")


def _summary_table(summary: Mapping[str, Any]) -> str:
    groups = summary.get("groups", [])
    rows = []
    for g in groups:
        rows.append([
            html.escape(str(g.get("method", ""))),
            _acc_text(g.get("acceleration")),
            str(g.get("n_volumes", "")),
            format_mean_2std(g.get("psnr"), ".2f"),
            format_mean_2std(g.get("ssim"), ".4f"),
            format_mean_2std(g.get("nmse"), ".4g"),
            str(g.get("n_invalid", 0)),
        ])
    return html_table(
        ["method", "acceleration", "volumes", "PSNR (dB)", "SSIM", "NMSE", "invalid"], rows, left=2
    )


def summary_text(summary: Mapping[str, Any]) -> str:
    """The summary table as plain text for the terminal (mean +- 2 std over volumes), notes, protocol."""
    def fmt(stat: Optional[Mapping[str, Any]], spec: str) -> str:
        if not stat or stat.get("mean") is None:
            return "-"
        two = stat.get("two_std")
        return f"{stat['mean']:{spec}}" + (f" +- {two:{spec}}" if two is not None else "")

    lines = [f"{'method':<28}{'R':>6}{'volumes':>9}{'PSNR (dB)':>18}{'SSIM':>20}{'NMSE':>22}"]
    for g in sorted(summary.get("groups", []), key=lambda g: (_acc_key(g.get("acceleration")), str(g["method"]))):
        acc = "-" if g.get("acceleration") is None else f"{g['acceleration']}"
        inv = f" ({g['n_invalid']} invalid)" if g.get("n_invalid") else ""
        lines.append(f"{str(g['method']):<28}{acc:>6}{g['n_volumes']:>9}{fmt(g['psnr'], '.2f'):>18}"
                     f"{fmt(g['ssim'], '.4f'):>20}{fmt(g['nmse'], '.4g'):>22}{inv}")
    lines += [f"note: {n}" for n in summary.get("notes", []) or []]
    if summary.get("protocol_text"):
        lines.append(f"({summary['protocol_text']})")
    return "\n".join(lines)


def _acc_key(acc: Any) -> float:
    try:
        return float(acc)
    except (TypeError, ValueError):
        return -1.0


def _volume_table(volume_rows: Sequence[Mapping[str, Any]]) -> str:
    rows, classes = [], []
    for r in volume_rows:
        valid = bool(r.get("valid", True))
        rows.append([
            html.escape(str(r.get("method", ""))),
            _acc_text(r.get("acceleration")),
            html.escape(str(r.get("file", ""))),
            str(r.get("slices", "")),
            html.escape(str(r.get("crop", ""))),
            fmt(r.get("psnr"), ".2f"),
            fmt(r.get("ssim"), ".4f"),
            fmt(r.get("nmse"), ".4g"),
            "yes" if valid else "<b>no</b> " + html.escape(str(r.get("note", ""))),
        ])
        classes.append("" if valid else "invalid")
    return html_table(
        ["method", "acceleration", "file", "slices", "crop", "PSNR (dB)", "SSIM", "NMSE", "valid"],
        rows, left=3, row_classes=classes,
    )


# ------------------------------------------------------------------------ panels


def error_scale(panel: Mapping[str, Any]) -> float:
    """Upper end of the common error/std colour scale of one panel row.

    ``panel["err_vmax"]`` if given, else the largest (over methods) 99.5th
    percentile of ``|recon - target|``; falls back to ``vmax`` if all errors are 0.
    """
    if panel.get("err_vmax") is not None:
        return float(panel["err_vmax"])
    target = np.asarray(panel["target"], dtype=np.float64)
    vals = []
    for rec in panel.get("recons", []):
        err = np.abs(np.asarray(rec["image"], dtype=np.float64) - target)
        err = err[np.isfinite(err)]
        if err.size:
            vals.append(float(np.percentile(err, ERROR_PERCENTILE)))
    top = max(vals) if vals else 0.0
    return top if top > 0 else float(panel.get("vmax", 1.0)) or 1.0


def _colorbar_html(vmin: float, vmax: float, cmap: str, label: str) -> str:
    uri = png_data_uri(colorbar_png(vmin, vmax, cmap))
    return (f'<span class="cbar">{html.escape(label)}: {vmin:.3g} '
            f'{img_tag(uri, alt=label + " colour bar")} {vmax:.3g}</span>')


def _cell(array: Optional[np.ndarray], vmin: float, vmax: float, cmap: str, caption: str) -> str:
    if array is None:
        return "<td></td>"
    uri = image_data_uri(array, vmin, vmax, cmap)
    return (f'<td>{img_tag(uri, alt=caption)}'
            f'<div class="cap">{html.escape(caption)}</div></td>')


def _mask_cell(mask: Optional[np.ndarray], height: int) -> str:
    """A sampling mask as an image (a 1-D mask (W,) drawn as columns) with its sampled share."""
    if mask is None:
        return "<td></td>"
    m = np.asarray(mask, dtype=np.float64)
    n = int(np.count_nonzero(m))
    what = "k-space columns" if m.ndim == 1 else f"k-space samples ({m.shape[0]} x {m.shape[1]})"
    text = f"sampling mask: {n} of {m.size} {what} ({100 * n / m.size:.1f} %, R = {m.size / max(n, 1):.2f})"
    return _cell(np.tile(m, (height, 1)) if m.ndim == 1 else m, 0, 1, IMAGE_CMAP, text)


def panel_html(panel: Mapping[str, Any]) -> str:
    """One panel row as an HTML ``<figure>``: a grid of embedded PNGs plus a caption.

    Grid columns: target, then one per method.  Grid rows: images on one grey
    scale ``0..vmax``; ``|recon - target|`` maps and (if any method has one)
    posterior std maps, all on one common scale ``0..err_vmax``
    (:func:`error_scale`); each method's sampling mask in a row of its own.
    The scales are stated in the caption.
    """
    recons = list(panel.get("recons", []))
    target = np.asarray(panel["target"], dtype=np.float64)
    vmax = float(panel["vmax"])
    err_vmax = error_scale(panel)
    has_std = any(r.get("std") is not None for r in recons)
    labels = [str(r.get("label", f"method {j + 1}")) for j, r in enumerate(recons)]
    head = "<tr><th></th><th>target</th>" + "".join(
        f"<th>{html.escape(l)}</th>" for l in labels) + "</tr>"
    img_row = ('<tr><th class="l">image</th>' + _cell(target, 0, vmax, IMAGE_CMAP, "target")
               + "".join(_cell(np.asarray(r["image"], dtype=np.float64), 0, vmax, IMAGE_CMAP,
                               r.get("note") or l) for r, l in zip(recons, labels)) + "</tr>")
    err_row = ('<tr><th class="l">|recon &minus; target|</th><td></td>' + "".join(
        _cell(np.abs(np.asarray(r["image"], dtype=np.float64) - target), 0, err_vmax, ERROR_CMAP,
              "|error| " + l) for r, l in zip(recons, labels)) + "</tr>")
    rows = [head, img_row, err_row]
    if has_std:
        rows.append('<tr><th class="l">posterior std</th><td></td>' + "".join(
            _cell(None if r.get("std") is None else np.asarray(r["std"], dtype=np.float64),
                  0, err_vmax, ERROR_CMAP, "std " + l) for r, l in zip(recons, labels)) + "</tr>")
    if any(r.get("mask") is not None for r in recons):
        rows.append('<tr><th class="l">sampling mask</th><td></td>' + "".join(
            _mask_cell(r.get("mask"), target.shape[-2]) for r in recons) + "</tr>")
    name = f"{panel.get('file', '')} slice {panel.get('slice', '')}" + (f", {panel['title']}" if panel.get("title") else "")
    pct = 100.0 * err_vmax / vmax if vmax else float("nan")
    how = ("given" if panel.get("err_vmax") is not None
           else f"the largest {ERROR_PERCENTILE:g}th percentile of the methods' absolute errors")
    caption = (
        f"<b>{html.escape(name)}</b>. Images on one fixed grey scale 0 .. {vmax:.4g} "
        "(target volume maximum). Absolute error maps" + (" and posterior std maps" if has_std else "")
        + f" on one fixed scale 0 .. {err_vmax:.4g} ({pct:.1f}% of the target maximum; {how}); "
        "brighter is larger.<br>" + _colorbar_html(0, vmax, IMAGE_CMAP, "image")
        + " &nbsp; " + _colorbar_html(0, err_vmax, ERROR_CMAP, "error / std")
    )
    return (f'<figure><table class="panel">{"".join(rows)}</table>'
            f"<figcaption>{caption}</figcaption></figure>")


# ------------------------------------------------------------------------ report


def render_report(
    summary: Mapping[str, Any],
    volume_rows: Sequence[Mapping[str, Any]],
    panels: Sequence[Mapping[str, Any]],
    protocol_text: str,
    title: str = "MRI reconstruction evaluation",
    extra_sections: Optional[Sequence[tuple[str, str]]] = None,
) -> str:
    """The report as an HTML string (see :func:`write_report` for the arguments)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="protocol">{html.escape(protocol_text)}</p>',
        "<h2>Summary: mean &plusmn; 2 std over volumes</h2>",
        _summary_table(summary),
        '<p class="small">2 std = twice the sample standard deviation (ddof = 1) over the '
        "valid volumes of each method and acceleration (as printed by fastmri/evaluate.py); "
        "invalid volumes are excluded from the means.</p>",
    ]
    for note in summary.get("notes", []) or []:
        parts.append(f'<p class="small"><b>Note:</b> {html.escape(str(note))}</p>')
    if panels:
        parts.append("<h2>Example slices</h2>")
        parts.extend(panel_html(p) for p in panels)
    parts.append("<h2>Per-volume metrics</h2>")
    parts.append(_volume_table(volume_rows))
    for sec_title, sec_html in extra_sections or []:
        parts.append(f"<h2>{html.escape(sec_title)}</h2>")
        parts.append(sec_html)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(
    path: Union[str, Path],
    summary: Mapping[str, Any],
    volume_rows: Sequence[Mapping[str, Any]],
    panels: Sequence[Mapping[str, Any]],
    protocol_text: str,
    title: str = "MRI reconstruction evaluation",
    extra_sections: Optional[Sequence[tuple[str, str]]] = None,
) -> Path:
    """Write the self-contained HTML report atomically and return its path.

    Args:
        path: output ``.html`` file.
        summary: dict with ``"groups"``: list of ``{"method", "acceleration",
            "n_volumes", "n_invalid", "psnr"|"ssim"|"nmse": {"mean", "two_std"}}``
            and optional ``"notes"`` (list of strings).
        volume_rows: per-volume dicts (``method, acceleration, file, slices,
            crop, nmse, psnr, ssim, valid, note``).
        panels: image panels, format in the module docstring.
        protocol_text: paragraph stating the metric protocol, crop, reference
            key and data_range rule.
        title: page title.
        extra_sections: ``[(title, html), ...]`` appended at the end (html is
            inserted verbatim; embed images with :func:`image_data_uri`).
    """
    text = render_report(summary, volume_rows, panels, protocol_text, title, extra_sections)
    atomic_write_text(path, text, overwrite=True)  # callers check the overwrite rules first
    return Path(path)
