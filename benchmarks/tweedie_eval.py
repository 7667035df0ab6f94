"""Issue 16's metrics (a) and (b): how priors trained from noisy data denoise, at and below the data's noise level.

Test data: a prepared set of FULLY SAMPLED noisy test scans (``mridiff prep TEST -R 1``: k-space, maps, noise
level, scale) and the same scans simulated without noise (``mridiff simulate ... --snr-db 300``: same images,
same coil maps). Per test slice, in the noisy set's normalised units:
- x_n: the coil-combined noisy image with white noise sigma_n = eta everywhere (``losses.tweedie.noisy_image``,
  seeded per slice); x0 = sum_c conj(S_c) ifft2c(y_clean / scale)_c, the clean image the priors learn
  (w x_true on the maps' support);
- (a) denoising at the scan's own level: D(x_n, sigma_n) against x0 (the posterior mean E[x0 | x_n] for an
  exact prior), PSNR of magnitudes with the slice maximum of |x0| as range;
- (b) denoising below it: D(x0 + sigma eps, sigma) against x0 at sigma = f sigma_n (f in --fractions), relative
  error ||D - x0||^2 / ||x0||^2, the same eps for every prior.
Per-slice paired differences with 95 % CIs (Student t over slices) against --reference priors. Metric (c), 4x
reconstruction from noisy undersampled k-space, is ``benchmarks/table.py`` on the noisy simulation.

Usage: python benchmarks/tweedie_eval.py --noisy-set PREP_TEST_R1 --clean CLEAN_SIM/multicoil_test \
           --prior tweedie=RUN/checkpoint.pt --prior naive=... --prior gsure=... --prior clean=... \
           --reference clean --reference naive [--fractions 0.5,0.25] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mri_diffusion.data import PreparedDataset, collate  # noqa: E402
from mri_diffusion.losses.common import crandn  # noqa: E402
from mri_diffusion.losses.tweedie import noisy_image  # noqa: E402
from mri_diffusion.physics.fft import ifft2c  # noqa: E402
from mri_diffusion.train import load_denoiser  # noqa: E402
from paired import ci95  # noqa: E402
from recon.experiment import machine_line  # noqa: E402


def clean_image(clean_dir: Path, slice_id: str, scale: float, maps: torch.Tensor) -> torch.Tensor:
    """x0 (H, W) complex: the noise-free scan's k-space in the noisy set's units, coil-combined with its maps."""
    name, idx = slice_id.rsplit(":", 1)
    with h5py.File(clean_dir / name, "r") as f:
        k = torch.from_numpy(np.asarray(f["kspace"][int(idx)], dtype=np.complex64)) / scale
    if k.shape != maps.shape:
        raise SystemExit(f"error: {clean_dir / name} slice {idx}: k-space {tuple(k.shape)} but the noisy set's maps "
                         f"are {tuple(maps.shape)} (another matrix or coil count?)")
    return (maps.conj() * ifft2c(k)).sum(0)


def psnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    r, y = ref.abs(), x.abs()
    return float(10 * torch.log10(r.max() ** 2 / ((r - y) ** 2).mean()))


@torch.no_grad()
def evaluate(data: PreparedDataset, clean_dir: Path, priors: dict, fractions: list[float]) -> dict:
    """{prior: {'a_psnr': [per slice], 'b_<f>': [per slice relative error]}}, plus the identity for (a)."""
    out = {name: {"a_psnr": [], **{f"b_{f:g}": [] for f in fractions}} for name in priors}
    out["no denoising"] = {"a_psnr": [], **{f"b_{f:g}": [] for f in fractions}}
    out["_slices"] = {"id": [], "energy": []}
    for i in range(len(data)):
        item = data[i]
        batch = collate([item])
        g = torch.Generator().manual_seed(i)
        x_n, eta = noisy_image(batch, g)
        x0 = clean_image(clean_dir, item["id"], float(item["scale"]), item["maps"])[None]
        out["no denoising"]["a_psnr"].append(psnr(x0[0], x_n[0]))
        out["_slices"]["id"].append(item["id"])
        out["_slices"]["energy"].append(float((x0.abs() ** 2).sum()))
        eps = {f: crandn(x0.shape, torch.Generator().manual_seed(10_000 + i), x0.device) for f in fractions}
        for f in fractions:
            out["no denoising"][f"b_{f:g}"].append(float(((eps[f] * eta * f).abs() ** 2).sum() / (x0.abs() ** 2).sum()))
        for name, net in priors.items():
            out[name]["a_psnr"].append(psnr(x0[0], net(x_n, eta)[0]))
            for f in fractions:
                s = eta * f
                d = net(x0 + eps[f] * s, s)
                out[name][f"b_{f:g}"].append(float(((d - x0).abs() ** 2).sum() / (x0.abs() ** 2).sum()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noisy-set", required=True, type=Path, help="prepared set (-R 1) of the noisy test scans")
    ap.add_argument("--clean", required=True, type=Path, help="folder of the same scans simulated without noise")
    ap.add_argument("--prior", action="append", required=True, help="NAME=CHECKPOINT")
    ap.add_argument("--reference", action="append", default=[], help="prior NAME to pair every other against")
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("--min-signal", type=float, default=0.01, help="leave out slices whose clean-image energy is "
                    "below this x the median slice's (a blank slice makes every relative error meaningless)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    fractions = [float(f) for f in a.fractions.split(",")]
    data = PreparedDataset(a.noisy_set)
    if float(data[0]["mask"].min()) != 1:
        raise SystemExit(f"error: {a.noisy_set} is not fully sampled (prepare the test scans with -R 1)")
    priors = {}
    for item in a.prior:
        name, path = item.split("=", 1)
        net, _, _ = load_denoiser(path, use_ema=True)
        net.eval()
        priors[name] = net
    res = evaluate(data, a.clean, priors, fractions)
    sl = res.pop("_slices")
    energy = np.asarray(sl["energy"])
    keep = energy >= a.min_signal * np.median(energy)  # slices with no signal: every relative error is noise/0
    dropped = [sid for sid, k in zip(sl["id"], keep) if not k]
    kept = {name: {key: list(np.asarray(v)[keep]) for key, v in r.items()} for name, r in res.items()}
    n = int(keep.sum())
    lines = [f"Machine: {machine_line(torch.device('cpu'))}. {n} test slices of {a.noisy_set}"
             + (f" ({len(dropped)} left out: clean-image energy below {a.min_signal:g} x the median slice's, "
                f"{', '.join(dropped)})" if dropped else "") + ".", "",
             "| prior | (a) PSNR of D(x_n, sigma_n) (dB) | " + " | ".join(
                 f"(b) rel. error at {f:g} sigma_n" for f in fractions) + " |",
             "|---|---|" + "---|" * len(fractions)]
    for name, r in kept.items():
        cells = [f"{np.mean(r['a_psnr']):.2f}"] + [f"{np.mean(r[f'b_{f:g}']):.4g}" if f"b_{f:g}" in r else "" for f in
                                                    fractions]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for ref in a.reference:
        if ref not in kept:
            raise SystemExit(f"error: --reference {ref!r} is not one of the priors {sorted(priors)}")
        lines += ["", f"Paired against {ref} (95 % CI over slices): (a) PSNR difference; (b) error ratio - 1 "
                  "(negative: lower error than the reference).", ""]
        for name in priors:
            if name == ref:
                continue
            da = np.array(kept[name]["a_psnr"]) - np.array(kept[ref]["a_psnr"])
            parts = [f"(a) {ci95(da)[0]:+.2f} dB [{ci95(da)[1]:+.2f}, {ci95(da)[2]:+.2f}]"]
            for f in fractions:
                ratio = np.array(kept[name][f"b_{f:g}"]) / np.array(kept[ref][f"b_{f:g}"]) - 1
                c = ci95(ratio)
                parts.append(f"(b) {f:g} sigma_n: {100 * c[0]:+.1f} % [{100 * c[1]:+.1f}, {100 * c[2]:+.1f}]")
            lines.append(f"- {name} - {ref}: " + "; ".join(parts))
    print("\n".join(lines))
    if a.out:
        a.out.write_text(json.dumps({"results": res, "slice_ids": sl["id"], "clean_energy": sl["energy"],
                                     "left_out": dropped, "slices": n, "lines": lines}, indent=1))
    return res


if __name__ == "__main__":
    main()
