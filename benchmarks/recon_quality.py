"""Reconstruction quality on the held-out test block (fastMRI protocol), every method on the same masks.

Methods: zero-filled, CG-SENSE, L1-wavelet (weight tuned on the validation block, never on test), and
posterior sampling with each given prior. Prints mean +- 2 std over test volumes of PSNR / SSIM / NMSE,
network calls and seconds per slice, with the machine; writes the evaluation (CSV/JSON/HTML) to --out/eval.

Usage: python benchmarks/recon_quality.py --data runs/colin27 --prior dsm=runs/train_dsm/checkpoint.pt \
         --prior gsure_r4=runs/train_gsure_r4/checkpoint.pt --accelerations 4,8 --out runs/quality
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import h5py
import torch

from recon.evaluate import evaluate_dirs
from recon.experiment import baseline_methods, prior_method, run_methods


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, type=Path, help="simulation root with multicoil_val/ and multicoil_test/")
    ap.add_argument("--prior", action="append", default=[], help="name=checkpoint")
    ap.add_argument("--accelerations", default="4,8")
    ap.add_argument("--sampler", default="dds")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--sampler-option", action="append", default=[], help="key=value")
    ap.add_argument("--max-slices", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real", type=Path, default=None, help="also reconstruct this folder of real fully sampled "
                    "fastMRI files (e.g. ../shared/data/real/fastmri_format/multicoil) with every method")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table (with date, machine, commit, "
                    "command) to this Markdown file")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    dev = torch.device(a.device)
    Rs = [float(r) for r in a.accelerations.split(",")]
    opts = {k: json.loads(v) if v[:1] in "[{0123456789-.tf" else v
            for k, v in (s.split("=", 1) for s in a.sampler_option)}
    methods = baseline_methods(a.data / "multicoil_val", Rs, dev, log=lambda R, lam, scores: print(
        f"L1-wavelet weight at R={R:g} tuned on validation: {lam:g}  (val PSNR {scores})"))
    for item in a.prior:
        name, path = item.split("=", 1)
        methods.append(prior_method(f"diffusion-{name}", path, dev, a.sampler, a.steps, a.samples, opts))
    run_methods(a.data / "multicoil_test", a.out / "recon", methods, Rs, dev, max_slices=a.max_slices)
    res = evaluate_dirs(a.out / "recon", a.data / "multicoil_test", a.out / "eval", overwrite=True)
    real_lines = []
    if a.real is not None:
        run_methods(a.real, a.out / "recon_real", methods, Rs, dev, max_slices=a.max_slices)
        real = evaluate_dirs(a.out / "recon_real", a.real, a.out / "eval_real", overwrite=True)
        print(f"\nreal data {a.real} (priors trained on the built-in Colin27 data only):")
        for g in sorted(real.summary["groups"], key=lambda g: (float(g["acceleration"]), g["method"])):
            row = (f"{g['method']:<20}{g['acceleration']:>3}{g['psnr']['mean']:>10.2f}{g['ssim']['mean']:>10.4f}"
                   f"{g['nmse']['mean']:>10.4f}")
            print(row)
            real_lines.append(f"| {g['method']} | {g['acceleration']} | {g['psnr']['mean']:.2f} | "
                              f"{g['ssim']['mean']:.4f} | {g['nmse']['mean']:.4f} |")
    lines = []
    print(f"\nmachine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {dev}")
    print(f"fastMRI protocol, {a.data / 'multicoil_test'}; sampler {a.sampler} ({a.samples} samples/slice)")
    print(f"{'method':<20}{'R':>3}{'PSNR':>16}{'SSIM':>18}{'NMSE':>18}{'calls/slice':>12}{'s/slice':>9}")
    for g in sorted(res.summary["groups"], key=lambda g: (float(g["acceleration"]), g["method"])):
        folder = a.out / "recon" / f"{g['method']}_R{float(g['acceleration']):g}"
        with h5py.File(next(folder.glob("*.h5"))) as f:
            calls = int(f.attrs.get("network_calls_per_sample", 0)) * int(f.attrs.get("samples", 1))
            sps = float(f.attrs.get("seconds_per_slice", float("nan")))
        fmt = lambda s, p: f"{s['mean']:{p}} +- {s['two_std'] or 0:{p}}"  # noqa: E731
        print(f"{g['method']:<20}{g['acceleration']:>3}{fmt(g['psnr'], '.2f'):>16}{fmt(g['ssim'], '.4f'):>18}"
              f"{fmt(g['nmse'], '.4f'):>18}{calls:>12}{sps:>9.2f}")
        lines.append(f"| {g['method']} | {g['acceleration']} | {fmt(g['psnr'], '.2f')} | {fmt(g['ssim'], '.4f')} | "
                     f"{fmt(g['nmse'], '.4f')} | {calls} | {sps:.2f} |")
    for u in res.summary.get("uncertainty", []):
        print(f"uncertainty {u['method']} R={u['acceleration']}: corr(std, |err|) {u['corr']:.3f}, "
              f"|err| <= 2 std for {100 * u['within_2std']:.1f} % of pixels")
    if a.markdown:
        import datetime
        import subprocess
        import sys

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        text = "\n".join([
            f"## Reconstruction quality ({datetime.date.today()}, commit {commit})", "",
            f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"device {dev}. Command: `python {' '.join(sys.argv)}`", "",
            f"fastMRI protocol (per volume, data_range = volume max), mean +- 2 std over the test volumes of "
            f"{a.data / 'multicoil_test'}; 1-D random masks; sampler {a.sampler}, {a.samples} posterior samples/slice.",
            "", "| method | R | PSNR (dB) | SSIM | NMSE | network calls/slice | s/slice |", "|---|---|---|---|---|---|---|",
            *lines, ""])
        if real_lines:
            text += "\n".join(["", f"Real data ({a.real}; one volume, fully sampled, undersampled retrospectively; "
                                "priors trained on the built-in data only):", "",
                                "| method | R | PSNR (dB) | SSIM | NMSE |", "|---|---|---|---|---|", *real_lines, ""])
        a.markdown.write_text(text)


if __name__ == "__main__":
    main()
