"""Per-slice paired differences between methods, with 95 % confidence intervals.

Reads the reconstructions that ``benchmarks/table.py`` (``recon.experiment.run_methods``) writes,
``RECON/<method>_R<R>/<file>.h5`` (``reconstruction``, magnitude at the fastMRI crop), and the targets
(the target (``data_prep.fastmri_h5.read_target``: the project's one key order)) of TARGETS/<file>.h5. Per slice: PSNR and SSIM at the fastMRI crop with the
fastMRI data range (the volume maximum of the target), NMSE per slice. For a pair (A, B) at one acceleration:
mean of A - B over all test slices, its 95 % CI (Student t over slices), how many slices A wins, and the
same over volumes (mean of each volume's slice differences; t over volumes). Slices of one volume are
correlated, so the slice CI is narrower than the volume CI: both are printed, with the counts.

Usage: python benchmarks/paired.py --recon OUT/recon --targets DATA/multicoil_test \
           --pair diffusion-gsure:l1-wavelet --pair diffusion-gsure:diffusion-dsm [--accelerations 4,8]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import h5py
import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.fastmri_h5 import read_target  # noqa: E402
from recon.metrics import fastmri_crop, slice_metrics  # noqa: E402

def per_slice(recon_dir: Path, targets: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(file stem, slice) -> {'psnr', 'ssim', 'nmse'} for every reconstruction file in ``recon_dir``."""
    out = {}
    for f in sorted(recon_dir.glob("*.h5")):
        with h5py.File(f, "r") as h:
            pred = h["reconstruction"][()]
        gt = read_target(targets / f.name)[0][: pred.shape[0]]
        g, p, _ = fastmri_crop(gt, pred)
        m = slice_metrics(g, p, "fastmri")
        for i in range(g.shape[0]):
            out[(f.stem, i)] = {k: float(m[k][i]) for k in ("psnr", "ssim", "nmse")}
    return out


def ci95(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) of a 95 % Student-t confidence interval for the mean."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def paired(a: dict, b: dict, metric: str) -> dict:
    """Paired differences a - b of ``metric`` over the slices both have: slice and volume CIs, wins."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise SystemExit("error: the two methods share no slices")
    d = np.array([a[k][metric] - b[k][metric] for k in keys])
    vols = sorted({k[0] for k in keys})
    dv = np.array([np.mean([a[k][metric] - b[k][metric] for k in keys if k[0] == v]) for v in vols])
    return {"slice": ci95(d), "volume": ci95(dv), "wins": int((d > 0).sum()), "slices": len(d),
            "volumes": len(vols), "worst": float(d.min())}


def table(recon: Path, targets: Path, pairs: list[tuple[str, str]], Rs: list[float]) -> list[str]:
    cache: dict[tuple[str, float], dict] = {}

    def get(m, R):
        if (m, R) not in cache:
            folder = recon / f"{m}_R{R:g}"
            if not folder.is_dir():
                raise SystemExit(f"error: no reconstructions {folder}")
            cache[(m, R)] = per_slice(folder, targets)
        return cache[(m, R)]

    lines = ["| pair (A - B) | R | PSNR diff (dB) [95 % CI, slices] | [95 % CI, volumes] | SSIM diff [95 % CI, "
             "slices] | A better on | worst slice (dB) |", "|---|---|---|---|---|---|---|"]
    for R in Rs:
        for A, B in pairs:
            p, s = paired(get(A, R), get(B, R), "psnr"), paired(get(A, R), get(B, R), "ssim")
            f = lambda c, spec: f"{c[0]:+{spec}} [{c[1]:+{spec}}, {c[2]:+{spec}}]"  # noqa: E731
            lines.append(f"| {A} - {B} | {R:g} | {f(p['slice'], '.2f')} | {f(p['volume'], '.2f')} | "
                         f"{f(s['slice'], '.4f')} | {p['wins']}/{p['slices']} slices ({p['volumes']} volumes) | "
                         f"{p['worst']:+.2f} |")
    return lines


def parse_pairs(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for it in items:
        if ":" not in it:
            raise SystemExit(f"error: --pair {it!r}: expected METHOD_A:METHOD_B")
        a, b = it.split(":", 1)
        out.append((a, b))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recon", required=True, type=Path)
    ap.add_argument("--targets", required=True, type=Path)
    ap.add_argument("--pair", action="append", required=True)
    ap.add_argument("--accelerations", default="4,8")
    a = ap.parse_args(argv)
    lines = table(a.recon, a.targets, parse_pairs(a.pair), [float(r) for r in a.accelerations.split(",")])
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
