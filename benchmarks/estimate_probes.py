"""Two alternatives to the guard's whole-image quality estimate, scored against the stored runs of
``benchmarks/guard.py`` (issue 20; BENCHMARKS.md, "Two more estimates that do not rank better").

The guard estimates each candidate's error from 2 folds of a few held-out lines each, through a ratio with what
the posterior expects there (``recon.selfval.ratio_estimate``). This script measures two estimates that need no
posterior, on the same files, masks and noise levels (``recon.experiment.run_methods``, the guard's virtual coils):

1. **Every line held out once, banded by radius (classical candidates only).** CG-SENSE and L1-wavelet (the
   weight tuned on --val, as in ``benchmarks/guard.py``) are rerun without each sampled line outside the
   calibration block (leave-one-line-out, ``selfval.cv_splits`` with one fold per line; and the guard's own
   5-fold split). Each held-out line j stands for the unmeasured lines whose k-space radius is nearer to its
   radius than to any other held-out line's (``band_weights``): error energy outside the mask
   ~ sum_j U_j e_j. No posterior, and every line is used instead of 4.
2. **The noise of the fastMRI reference.** The true PSNR is measured against the RSS of *noisy* fully sampled
   k-space, while the held-out estimate is of the error against the noise-free image. ``noise_term`` is
   E_n sum_pixels (RSS(S x + n) - RSS(S x))^2 with x the CG-SENSE image and n ~ CN(0, sigma^2) per coil pixel
   (16 draws): what that noise adds to any reconstruction's squared error. It is added to the guard's estimate.

Scored: Spearman(estimate, true PSNR) over slices x {diffusion, L1-wavelet, CG-SENSE} per acceleration and with
both together (``benchmarks/guard.py``'s ``spearman_ci``), the diffusion point always the guard's own estimate.

Usage: python benchmarks/estimate_probes.py --dataset knee=runs/knee128/multicoil_test
           --guard-run knee:siat=runs/guard_knee_aux/knee --val runs/siat128/multicoil_val --out runs/probes
           [--max-slices 5] [--accelerations 4,8] [--no-loo]
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

from paired import per_slice  # noqa: E402
from recon import baselines, selfval  # noqa: E402
from recon.experiment import Method, machine_line, run_methods, tune_l1_lambda  # noqa: E402
from recon.pipeline import SliceResult  # noqa: E402
from recon.samplers.common import derive_seed  # noqa: E402


def band_weights(mask: torch.Tensor, positions: list[int]) -> dict[int, float]:
    """{held-out position: the number of unmeasured positions of ``mask`` (1, 1, W) or (1, H, W) whose k-space
    radius is nearer to its radius than to any other held-out position's} (band edges half-way between
    neighbouring radii, as ``selfval.split_mask``); the weights sum to the unmeasured positions."""
    flat, r, _ = selfval._candidates(mask)
    pos = sorted(set(positions), key=lambda p: (r[p], p))
    edges = [0.0] + [(r[a] + r[b]) / 2 for a, b in zip(pos[:-1], pos[1:])] + [np.inf]
    out_r = r[~flat.numpy()]
    return {p: float(((out_r >= lo) & (out_r < hi)).sum()) for p, lo, hi in zip(pos, edges[:-1], edges[1:])}


def noise_term(coil: torch.Tensor, sigma: float, draws: int = 16, seed: int = 0) -> float:
    """E_n sum_pixels (RSS(coil + n) - RSS(coil))^2 over ``draws`` draws of n ~ CN(0, sigma^2) per entry of
    ``coil`` (C, H, W) complex: the squared error that the noise of an RSS reference adds (module doc, 2)."""
    g = torch.Generator().manual_seed(seed)
    clean = coil.abs().pow(2).sum(0).sqrt()
    acc = torch.zeros_like(clean)
    for _ in range(draws):
        n = torch.complex(torch.randn(coil.shape, generator=g), torch.randn(coil.shape, generator=g))
        acc += ((coil + n * (sigma / math.sqrt(2))).abs().pow(2).sum(0).sqrt() - clean) ** 2
    return float(acc.sum()) / draws


class Probe:
    """A ``SliceMethod`` that returns the CG-SENSE image and records the two estimates of the module doc."""

    uses_noise_std = True

    def __init__(self, l1_lambda: float, loo: bool = True):
        self.cands = ["sense", f"l1-wavelet:{l1_lambda:g}"]
        self.lam, self.loo = l1_lambda, loo

    def _rec(self, c, k, mask, maps):
        if c == "sense":  # the guard's candidates (GuardOptions defaults)
            return baselines.cg_sense(k, mask, maps, iters=30, lam=1e-2)
        return baselines.l1_wavelet(k, mask, maps, lam=self.lam, iters=100)

    def __call__(self, k, mask, maps, ctx):
        sigma = float(ctx["noise_std"])
        sense = self._rec("sense", k, mask, maps)
        info = {"noise_term": noise_term(maps * sense, sigma), "HW": int(k.shape[-2] * k.shape[-1])}
        for tag, folds in (("cv5", 5), ("loo", 10 ** 9)) if self.loo else (("cv5", 5),):
            splits = selfval.cv_splits(mask, folds, derive_seed(ctx["file"], ctx["slice"], "guard-cv", 0))
            if not splits:
                continue
            w = band_weights(mask, [int(p) for s in splits for p in s.val_index.tolist()])
            for c in self.cands:
                per = {}
                for s in splits:
                    v = selfval.validation_error(k, maps, s, self._rec(c, k * s.recon_mask, s.recon_mask, maps), sigma)
                    per.update(zip(s.val_index.tolist(), v["per_position"].tolist()))
                info.setdefault(tag, {})[c] = sum(w[p] * e for p, e in per.items())
                # the share of the estimate that the line with the largest term carries
                info.setdefault(tag + "_top_share", {})[c] = max(w[p] * e for p, e in per.items()) / max(
                    sum(w[p] * e for p, e in per.items()), 1e-30)
            info[tag + "_lines"] = len(w)
        return SliceResult(sense, {}, info=info)


def infos(folder: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for f in sorted(folder.glob("*.h5")):
        with h5py.File(f, "r") as h:
            for i, v in enumerate(json.loads(h.attrs["slice_info"])):
                if v is not None:
                    out[(f.stem, i)] = v
    return out


def score(guard_dir: Path, prior: str, probe_dir: Path, targets: Path, R: float, lam: float) -> dict[str, list]:
    """{estimate name: points [(file, slice, method, R, est PSNR, true PSNR), ...]} for one row."""
    from guard import slice_infos, volume_peaks

    g = slice_infos(guard_dir / f"auto-{prior}_R{R:g}")
    p = infos(probe_dir / f"probe_R{R:g}")
    true = {"diffusion": per_slice(guard_dir / f"diffusion-{prior}_R{R:g}", targets),
            "l1-wavelet": per_slice(guard_dir / f"l1-wavelet_R{R:g}", targets),
            "sense": per_slice(guard_dir / f"sense_R{R:g}", targets)}
    peaks = volume_peaks(guard_dir / f"sense_R{R:g}")
    l1 = f"l1-wavelet:{lam:g}"
    out: dict[str, list] = {}
    for s in sorted(set(g) & set(p)):
        gi, pi = g[s], p[s]
        if "est_mse" not in gi:
            continue
        hw = pi["HW"]
        own = {m: gi["est_mse"][c] * hw for m, c in (("diffusion", "diffusion"), ("l1-wavelet", l1), ("sense", "sense"))}
        ests = {"guard": own, "guard + reference noise": {m: e + pi["noise_term"] for m, e in own.items()}}
        for tag in ("cv5", "loo"):
            if tag in pi:
                ests[f"classical: {tag} banded"] = {"diffusion": own["diffusion"], "l1-wavelet": pi[tag][l1],
                                                    "sense": pi[tag]["sense"]}
        for name, e in ests.items():
            for m, v in e.items():
                mse = v / hw * gi["scale"] ** 2
                est = selfval.estimated_psnr(mse, peaks[s[0]]) if math.isfinite(mse) else math.nan
                out.setdefault(name, []).append([s[0], s[1], m, R, est, true[m][s]["psnr"]])
        out.setdefault("_top_share", []).extend(pi.get("loo_top_share", {}).values())
        out.setdefault("_noise_db", []).append(10 * math.log10(pi["noise_term"] / max(own["sense"], 1e-30)))
    return out


def main(argv=None):
    from guard import spearman_ci

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", required=True, help="NAME=FOLDER of test files")
    ap.add_argument("--guard-run", action="append", required=True,
                    help="DATA:PRIOR=FOLDER, the dataset's folder of a benchmarks/guard.py run")
    ap.add_argument("--val", type=Path, required=True, help="validation files for the L1 weight")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--accelerations", default="4,8")
    ap.add_argument("--max-slices", type=int, default=None)
    ap.add_argument("--no-loo", dest="loo", action="store_false", help="only the 5-fold split (faster)")
    a = ap.parse_args(argv)
    dev = torch.device("cpu")
    datasets = dict(x.split("=", 1) for x in a.dataset)
    Rs = [float(r) for r in a.accelerations.split(",")]
    lams = {R: tune_l1_lambda(a.val, R, dev)[0] for R in Rs}
    print(f"L1 weights tuned on {a.val}: {lams}", flush=True)
    from recon.diffusion import DEFAULT_VIRTUAL_COILS

    for name, folder in datasets.items():
        m = Method("probe", lambda R: Probe(lams[R], a.loo), attrs={"loo": a.loo},
                   settings=lambda R: {"l1_lambda": lams[R]}, virtual_coils=DEFAULT_VIRTUAL_COILS)
        run_methods(Path(folder), a.out / name, [m], Rs, dev, max_slices=a.max_slices, progress=False)
    lines = [f"Machine: {machine_line(dev)}", "",
             "| data | prior | R | " + " | ".join(["guard", "guard + reference noise", "classical: cv5 banded",
                                                   "classical: loo banded"]) + " | top line's share (loo) | "
             "reference noise / SENSE estimate (dB) |", "|---" * 9 + "|"]
    for spec in a.guard_run:
        key, folder = spec.split("=", 1)
        data, prior = key.split(":")
        pooled: dict[str, list] = {}
        for R in Rs + [None]:
            if R is None:
                pts = pooled
            else:
                pts = score(Path(folder), prior, a.out / data, Path(datasets[data]), R, lams[R])
                for k, v in pts.items():
                    pooled.setdefault(k, []).extend(v)
            cells = []
            for est in ("guard", "guard + reference noise", "classical: cv5 banded", "classical: loo banded"):
                p = [q for q in pts.get(est, []) if math.isfinite(q[4])]
                r, lo, hi = spearman_ci(p) if p else (math.nan,) * 3
                cells.append(f"{r:.2f} [{lo:.2f}, {hi:.2f}]")
            share = np.mean(pts["_top_share"]) if pts.get("_top_share") else math.nan
            lines.append(f"| {data} | {prior} | {'4+8' if R is None else f'{R:g}'} | " + " | ".join(cells)
                         + f" | {share:.2f} | {np.mean(pts['_noise_db']):+.1f} |")
    print("\n".join(lines))
    (a.out / "estimate_probes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
