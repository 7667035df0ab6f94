"""The data-efficiency experiment of view models (issue: views + residual score), fastMRI protocol.

Priors compared on the held-out test block of the built-in data, same masks, same sampler:
  (a) --subset  GSURE prior trained on a small full-resolution subset (undersampled 4x);
  (b) --views   view model(s) on plentiful low-resolution scans + residual trained with GSURE on that subset;
  (c) --full    GSURE prior on all full-resolution training slices (reference);
plus any --prior NAME=CKPT ablations (e.g. views alone, no regulariser). Prints PSNR/SSIM per prior and
acceleration, the gain (b) - (a) and the share of the (a) -> (c) gap that (b) closes, with the machine.

Usage: python benchmarks/views_efficiency.py --data runs/colin27 --subset runs/views/sub_gsure/checkpoint.pt \
         --views runs/views/views_lowres/checkpoint.pt --full builtin --prior views_only=... --out runs/views/eval
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
from pathlib import Path

import torch

from recon.evaluate import evaluate_dirs
from recon.experiment import prior_method, run_methods


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--subset", required=True, help="(a) checkpoint")
    ap.add_argument("--views", required=True, help="(b) checkpoint")
    ap.add_argument("--full", required=True, help="(c) checkpoint or 'builtin'")
    ap.add_argument("--prior", action="append", default=[], help="NAME=CKPT: more priors (ablations)")
    ap.add_argument("--accelerations", default="4,8")
    ap.add_argument("--sampler", default="dds")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-slices", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table to this Markdown file")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    dev = torch.device("cpu")
    Rs = [float(r) for r in a.accelerations.split(",")]
    priors = [("a_subset", a.subset), ("b_views_residual", a.views), ("c_full", a.full)]
    priors += [tuple(p.split("=", 1)) for p in a.prior]
    methods = [prior_method(name, path, dev, a.sampler, None, a.samples) for name, path in priors]
    run_methods(a.data / "multicoil_test", a.out / "recon", methods, Rs, dev, max_slices=a.max_slices)
    res = evaluate_dirs(a.out / "recon", a.data / "multicoil_test", a.out / "eval", overwrite=True)
    g = {(x["method"], float(x["acceleration"])): x for x in res.summary["groups"]}
    machine = (f"{platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, cpu")
    lines = ["| prior | R | PSNR (dB) | SSIM | NMSE |", "|---|---|---|---|---|"]
    for R in Rs:
        for name, _ in priors:
            x = g[(name, R)]
            lines.append(f"| {name} | {R:g} | {x['psnr']['mean']:.2f} +- {x['psnr']['two_std'] or 0:.2f} | "
                         f"{x['ssim']['mean']:.4f} | {x['nmse']['mean']:.4f} |")
    summary = []
    for R in Rs:
        pa, pb, pc = (g[(n, R)]["psnr"]["mean"] for n in ("a_subset", "b_views_residual", "c_full"))
        gap = pc - pa
        closed = (pb - pa) / gap if abs(gap) > 1e-9 else float("nan")
        summary.append(f"R={R:g}: (b) - (a) = {pb - pa:+.2f} dB (goal >= +0.5); gap (a) -> (c) = {gap:+.2f} dB, "
                       f"closed by (b): {100 * closed:.0f} % (goal >= 50 %)")
    print(f"machine: {machine}\nsampler {a.sampler}, {a.samples} samples/slice, fastMRI protocol, "
          f"{a.data / 'multicoil_test'}")
    print("\n".join(lines + [""] + summary))
    if a.markdown:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        a.markdown.write_text("\n".join([
            f"## View models + residual: data efficiency ({datetime.date.today()}, commit {commit})", "",
            f"Machine: {machine}. Command: `python {' '.join(sys.argv)}`", "",
            f"fastMRI protocol, mean +- 2 std over the test volumes of {a.data / 'multicoil_test'}; 1-D random "
            f"masks; sampler {a.sampler}, {a.samples} posterior samples/slice.", "", *lines, "", *summary, ""]))


if __name__ == "__main__":
    main()
