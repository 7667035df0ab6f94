"""How good are SFBD's backward-step targets? Audit each round's draws against the truth (issue 17).

SFBD (``recon/sfbd.py``) fine-tunes with plain DSM on the clean scans plus one posterior draw (or the mean of a
few) per undersampled training scan, written as the prepared set ``RUN/rounds/K/data/``. The simulated training
set knows every scan's fully sampled image, which SFBD never reads for the undersampled ones; this script reads
it, only to audit. Per round, over the undersampled slices (complex coil-combined images, the prepared units):

- PSNR of the draw against the true image (the true image's maximum magnitude as range), mean [95 % CI];
- where the error sits in k-space (orthonormal 2-D FFT of draw - truth, Parseval): the share of its energy on
  the measured lines (there the draw can only be off by the measurement noise it kept) and on the unmeasured
  ones (what the prior filled in), and the error energy per measured line against the noise energy per line
  (noise_std^2 x lines' entries: 1 = the draw carries the full measurement noise on the measured lines).

A draw at PSNR p is a DSM target that is itself p dB from the clean image, so the forward step learns the
distribution of draws, not of images: this bounds what a round can add.

``--prior NAME=CKPT`` (repeat) makes the same backward step (``recon.sfbd.backward_step``: the run's sampler
settings and seeds of round 1) with another prior on the first run's undersampled scans and audits those draws
too, without writing them: e.g. the GSURE prior or DSM on all clean volumes (the ceiling), to separate what the
sampler costs from what the model costs.

Usage: python benchmarks/sfbd_draws.py --run runs/siat_sfbd14 --truth runs/siat128_prep_r4 [--json OUT.json]
           [--run runs/siat_sfbd7 ...] [--prior gsure=builtin --prior dsm_all=runs/siat_train_dsm/checkpoint.pt]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paired import ci95  # noqa: E402
from mri_diffusion.data import PreparedDataset  # noqa: E402
from mri_diffusion.physics.fft import fft2c  # noqa: E402
from recon.sfbd import _file_of  # noqa: E402


def audit(items, truth: dict[str, torch.Tensor], clean: set[str]) -> dict:
    """Per-slice figures (module doc) of the draws ``items`` (dicts with id, target = the draw, mask, noise_std),
    over the undersampled slices (files in ``clean`` are skipped: their targets are the truth); ``truth``: slice id
    -> true complex image (H, W)."""
    psnr, share, per_line = [], [], []
    for it in items:
        if _file_of(it["id"]) in clean:
            continue
        x, y = torch.as_tensor(it["target"]).to(torch.complex128), truth[it["id"]].to(torch.complex128)
        if x.shape != y.shape:
            raise ValueError(f"slice {it['id']}: draw {tuple(x.shape)} vs truth {tuple(y.shape)}")
        err = x - y
        psnr.append(10 * math.log10(float(y.abs().max()) ** 2 / float((err.abs() ** 2).mean())))
        e = (fft2c(err).abs() ** 2).sum(0)  # (W,): energy per phase-encode line (1-D masks)
        m = it["mask"].reshape(-1).bool()
        share.append(float(e[m].sum() / e.sum()))
        noise_per_line = float(it["noise_std"]) ** 2 * y.shape[0]
        per_line.append(float(e[m].mean()) / noise_per_line if noise_per_line > 0 else math.nan)
    return {"slices": len(psnr), "psnr": ci95(np.array(psnr)), "measured_share": float(np.mean(share)),
            "measured_error_over_noise": float(np.nanmean(per_line))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", required=True, help="an SFBD run folder (repeat)")
    ap.add_argument("--truth", type=Path, required=True, help="the prepared set the runs were trained on")
    ap.add_argument("--prior", action="append", default=[], help="NAME=CKPT: audit this prior's draws too (repeat)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    ref = PreparedDataset(a.truth, with_targets=True)
    items = [ref[i] for i in range(len(ref))]
    truth = {it["id"]: it["target"] for it in items}
    rows = []
    for run in a.run:
        rounds = sorted((run / "rounds").iterdir(), key=lambda p: int(p.name)) if (run / "rounds").is_dir() else []
        if not rounds:
            raise SystemExit(f"{run}: no rounds/K/data folders (is it an SFBD run?)")
        for r in rounds:
            d = PreparedDataset(r / "data", with_targets=True)
            info = d.manifest.get("sfbd", {})
            row = {"run": str(run), "round": int(r.name), "estimate": info.get("estimate", "?"),
                   **audit((d[i] for i in range(len(d))), truth, set(info.get("clean_files", [])))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.prior:
        from mri_diffusion.config import TrainConfig
        from mri_diffusion.train.checkpoint import resolve_checkpoint
        from recon.sfbd import backward_step, clean_split, slice_ids

        cfg = TrainConfig.from_yaml(a.run[0] / "config.yaml").sfbd
        clean, _, under = clean_split(slice_ids(ref), cfg, str(a.truth))
        for spec in a.prior:
            name, ckpt = spec.split("=", 1)
            est, rec = backward_step(resolve_checkpoint(ckpt), ref, under, cfg, 1, torch.device("cpu"))
            draws = ({**items[i], "target": est[i]} for i in under)
            row = {"run": name, "round": 1, "estimate": rec["estimate"], **audit(draws, truth, set(clean))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    ci = lambda c: f"{c[0]:.2f} [{c[1]:.2f}, {c[2]:.2f}]"  # noqa: E731
    print("\n| run | round | estimate | draws (slices) | draw PSNR vs truth [95 % CI] | error energy on measured lines | "
          "per measured line / noise |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {Path(r['run']).name} | {r['round']} | {r['estimate']} | {r['slices']} | {ci(r['psnr'])} | "
              f"{100 * r['measured_share']:.1f} % | {r['measured_error_over_noise']:.2f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
