"""Few-step posterior sampling: network calls per sample against PSNR, side by side in one run (issue 18, part 3).

Every configuration reconstructs the same slices with the same masks (1-D random, seeded per file) and the same
sample seeds; each is compared with ``--reference`` (the 30-call default) by per-slice paired PSNR differences
with a 95 % CI (Student t over slices). PSNR per slice: magnitude of the posterior mean against the file's
``reconstruction_rss``, the volume maximum as range (the fastMRI range choice). s/slice is the sampler's wall time
per slice (coil maps excluded) on this machine, the batch of ``--samples`` draws sharing each network call.

A configuration is ``name=key:value,key:value``. Schedule keys: ``steps`` (noise levels = network calls for dds),
``sigma_max``, ``sigma_min``, ``rho`` (the Karras schedule's curvature), ``samples`` (posterior draws averaged,
default ``--samples``); every other key is a sampler option (``eta``, ``cg_iters``, ``dc_weight``, ...). SSIM per
slice (win 7, the volume maximum as range) is paired the same way. Example (tune on validation volumes, confirm on test volumes):

  python benchmarks/few_step.py --data runs/siat128/multicoil_val --prior builtin \
      --config ref=steps:30 --config s10=steps:10 --config s10_cg20=steps:10,cg_iters:20 --reference ref \
      --accelerations 4,8 --out runs/few_step/val.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_prep.fastmri_h5 import list_h5, open_volume, read_target  # noqa: E402
from paired import ci95  # noqa: E402
from recon.diffusion import DEFAULT_VIRTUAL_COILS, DiffusionRecon, load_prior, parse_sampler_options  # noqa: E402
from recon.experiment import git_commit, machine_line  # noqa: E402
from recon.metrics import slice_metrics  # noqa: E402
from recon.pipeline import MaskSpec, reconstruct_volume  # noqa: E402

SCHEDULE_KEYS = ("steps", "sigma_max", "sigma_min", "rho", "samples")


def parse_config(text: str) -> tuple[str, dict, dict]:
    """``name=key:value,...`` -> (name, schedule {steps, sigma_max, sigma_min, rho}, sampler options as text)."""
    if "=" not in text:
        raise SystemExit(f"error: --config {text!r}: expected name=key:value,...")
    name, rest = text.split("=", 1)
    sched, opts = {}, {}
    for item in filter(None, rest.split(",")):
        if ":" not in item:
            raise SystemExit(f"error: --config {text!r}: {item!r} is not key:value")
        k, v = item.split(":", 1)
        if k in SCHEDULE_KEYS:
            sched[k] = int(v) if k in ("steps", "samples") else float(v)
        else:
            opts[k] = v
    return name, sched, opts


class Timed:
    """A slice method wrapper that adds up the wall time spent in the sampler."""

    def __init__(self, rec: DiffusionRecon):
        self.rec, self.seconds, self.slices = rec, 0.0, 0
        self.uses_noise_std = rec.uses_noise_std

    def __call__(self, k, mask, maps, ctx):
        t = time.perf_counter()
        out = self.rec(k, mask, maps, ctx)
        self.seconds += time.perf_counter() - t
        self.slices += 1
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder of multi-coil fastMRI-format .h5 files")
    ap.add_argument("--prior", default="builtin", help="checkpoint (or builtin)")
    ap.add_argument("--sampler", default="dds")
    ap.add_argument("--config", action="append", required=True, help="name=key:value,... (see above)")
    ap.add_argument("--reference", required=True, help="the configuration every other one is paired with")
    ap.add_argument("--accelerations", default="4,8")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-slices", type=int, default=None, help="slices per file (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="write every per-slice PSNR and the summary as JSON")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    dev = torch.device("cpu")
    net, cfg, ck = load_prior(a.prior, dev)
    configs = [parse_config(c) for c in a.config]
    names = [c[0] for c in configs]
    if a.reference not in names:
        raise SystemExit(f"error: --reference {a.reference!r} is not one of the configurations {names}")
    methods = {}
    for name, sched, raw in configs:
        sched = {"samples": a.samples, **sched}
        rec = DiffusionRecon(net, a.sampler, options=parse_sampler_options(a.sampler, raw), **sched)
        methods[name] = rec
    files = list_h5(a.data)
    Rs = [float(r) for r in a.accelerations.split(",")]
    psnr: dict = {R: {n: [] for n in names} for R in Rs}
    ssim: dict = {R: {n: [] for n in names} for R in Rs}
    secs: dict = {R: {n: [0.0, 0] for n in names} for R in Rs}
    for R in Rs:
        for f in files:
            vol = open_volume(f)
            target, _ = read_target(f)
            n = vol.num_slices if a.max_slices is None else min(a.max_slices, vol.num_slices)
            target = target[:n]
            rng = float(target.max())
            for name in names:
                m = Timed(methods[name])
                res = reconstruct_volume(vol, m, MaskSpec("random", R, None, 0), dev, max_slices=n, progress=False,
                                         virtual_coils=DEFAULT_VIRTUAL_COILS)
                rec = res["reconstruction"]
                for s in range(n):
                    mse = float(np.mean((rec[s] - target[s]) ** 2))
                    psnr[R][name].append(10 * np.log10(rng**2 / mse))
                ssim[R][name] += [float(v) for v in slice_metrics(target, rec[:n], maxval=rng)["ssim"]]
                secs[R][name][0] += m.seconds
                secs[R][name][1] += m.slices
            print(f"R={R:g} {f.name}: " + ", ".join(f"{nm} {np.mean(psnr[R][nm][-n:]):.2f}" for nm in names),
                  flush=True)
    print(f"\n{a.data}, {len(files)} files, prior {a.prior} (step {ck['step']}), sampler {a.sampler}, "
          f"{a.samples} samples; {machine_line(dev)}; commit {git_commit()}")
    summary = []
    print(f"{'config':<14}{'R':>3}{'calls':>7}{'s/slice':>9}{'PSNR':>8}{'- ' + a.reference + ' [95% CI]':>30}"
          f"{'SSIM':>8}{'- ' + a.reference:>12}  schedule / options")
    for R in Rs:
        ref = np.asarray(psnr[R][a.reference])
        for name, sched, raw in configs:
            rec = methods[name]
            v = np.asarray(psnr[R][name])
            mean, lo, hi = ci95(v - ref)
            w = np.asarray(ssim[R][name])
            smean, slo, shi = ci95(w - np.asarray(ssim[R][a.reference]))
            s, k = secs[R][name]
            row = {"config": name, "R": R, "calls": rec.calls_per_sample, "s_per_slice": s / max(k, 1),
                   "psnr": float(v.mean()), "diff": mean, "ci": [lo, hi], "slices": int(v.size),
                   "ssim": float(w.mean()), "ssim_diff": smean, "ssim_ci": [slo, shi],
                   "sigmas": [round(float(x), 5) for x in rec.sigmas], "options": rec.all_options}
            summary.append(row)
            print(f"{name:<14}{R:>3g}{row['calls']:>7}{row['s_per_slice']:>9.2f}{row['psnr']:>8.2f}"
                  f"{mean:>+12.2f} [{lo:+.2f}, {hi:+.2f}]{w.mean():>10.4f} {smean:+.4f} [{slo:+.4f}, {shi:+.4f}]  "
                  f"{sched} {raw}")
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"data": str(a.data), "prior": a.prior, "files": [f.name for f in files],
                                     "summary": summary, "psnr": {str(R): psnr[R] for R in Rs},
                                     "ssim": {str(R): ssim[R] for R in Rs},
                                     "machine": machine_line(dev), "commit": git_commit()}, indent=1))


if __name__ == "__main__":
    main()
