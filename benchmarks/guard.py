"""Unseen anatomy: the guarded reconstruction (``recon --method auto``) against the unguarded diffusion posterior,
L1-wavelet and CG-SENSE, per dataset and prior, with per-slice paired CIs.

For each dataset (a folder of fastMRI multi-coil test files) x prior x acceleration, on the same masks
(``recon.experiment.run_methods``): CG-SENSE, L1-wavelet (weight tuned on --val, never on the test files) and
the guarded reconstruction. The guard always refits the unguarded posterior too (``reconstruction_diffusion``):
it is written out as the method ``diffusion-<prior>`` so both are scored from one run, on the same samples.

Reported (markdown + JSON):
- PSNR of each method; guarded - max(L1, SENSE) (the better baseline by mean PSNR) with its 95 % CI over
  slices and its worst slice; guarded - unguarded diffusion; the share of slices flagged (the OOD flag of
  ``recon.ood`` when the prior has a reference, and in brackets the held-out-line rule); the share of the
  slices where the unguarded diffusion loses to L1-wavelet that are flagged (recall);
- Spearman rank correlation (95 % bootstrap CI over slices) within the dataset, per acceleration and pooled
  over the accelerations, between the held-out estimate of PSNR (``recon.selfval``:
  measurements only, the CG-SENSE volume maximum as range for every method) and the true PSNR, over slices x
  {diffusion, L1-wavelet at its tuned weight, CG-SENSE}, for the guard's estimate (each candidate's ratio
  estimate with its own auxiliary, ``selfval.expected_energy``) and the older one (the posterior spread as
  auxiliary for every candidate); for runs with the guard's per-line record, also the same estimate without
  each fold's innermost held-out line (``outer_lines_mse``, the pooled table's last columns);
- calibration of the std map (``recon.uncertainty.calibration``): the unguarded posterior std against the
  unguarded error, and the guard's std against the guarded error.

Usage: python benchmarks/guard.py --dataset siat=runs/siat128/multicoil_test --dataset knee=runs/knee128/multicoil_test
           --prior siat=builtin --prior colin27=builtin-colin27 --val runs/siat128/multicoil_val --out runs/guard
           [--only siat:siat,knee:siat] [--accelerations 4,8] [--markdown BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_prep.fastmri_h5 import read_target, write_reconstruction  # noqa: E402
from paired import ci95, per_slice  # noqa: E402
from recon.experiment import Method, baseline_methods, machine_line, run_methods  # noqa: E402
from recon.metrics import fastmri_crop  # noqa: E402
from recon import selfval  # noqa: E402
from recon.guard import GuardOptions, held_out_flag  # noqa: E402
from recon.uncertainty import calibration  # noqa: E402


def guard_method(name: str, checkpoint: str, device, samples: int = 4, few_step: bool = False, **guard) -> Method:
    from recon.diffusion import DEFAULT_VIRTUAL_COILS, FEW_STEP, DiffusionRecon, load_prior
    from recon.guard import GuardedRecon, GuardOptions

    from recon.ood import find_reference

    net, cfg, ck = load_prior(checkpoint, device)
    # few_step: the 10-call dds recipe (BENCHMARKS.md, Few-step sampling) for all three posterior runs per slice
    rec = DiffusionRecon(net, samples=samples, **FEW_STEP) if few_step else DiffusionRecon(net, "dds", None, samples)
    g = GuardedRecon(rec, GuardOptions(**guard), find_reference(checkpoint))
    return Method(name, lambda R: g, attrs={"prior": checkpoint, "prior_step": int(ck["step"]), "samples": samples,
                                            "guard": json.dumps(g.describe()["guard"]),
                                            **({"sigmas": rec.sigmas_attr} if few_step else {})},
                  virtual_coils=DEFAULT_VIRTUAL_COILS)


def split_unguarded(auto_dir: Path, dest: Path) -> None:
    """Write the guard's refit unguarded posterior (mean, std) as a method folder of its own."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(auto_dir.glob("*.h5")):
        with h5py.File(f, "r") as h:
            rec = h["reconstruction_diffusion"][()]
            extra = {"reconstruction_std": h["reconstruction_diffusion_std"][()], "mask": h["mask"][()]}
            attrs = {k: v for k, v in h.attrs.items() if k not in ("slice_info", "ood_flags", "guard")}
        write_reconstruction(dest / f.name, rec, extra=extra, attrs=attrs, overwrite=True)


def slice_infos(auto_dir: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for f in sorted(auto_dir.glob("*.h5")):
        with h5py.File(f, "r") as h:
            infos = json.loads(h.attrs["slice_info"])
            peak = float(h["reconstruction"][()].max())
            peak_d = float(h["reconstruction_diffusion"][()].max())
        for i, info in enumerate(infos):
            if info is not None:
                out[(f.stem, i)] = {**info, "_peak": peak, "_peak_diffusion": peak_d}
    return out


def volume_peaks(folder: Path) -> dict[str, float]:
    out = {}
    for f in sorted(folder.glob("*.h5")):
        with h5py.File(f, "r") as h:
            out[f.stem] = float(h["reconstruction"][()].max())
    return out


def std_calibration(folder: Path, targets: Path) -> dict:
    t, r, s = [], [], []
    for f in sorted(folder.glob("*.h5")):
        with h5py.File(f, "r") as h:
            rec, std = h["reconstruction"][()], h["reconstruction_std"][()]
        gt = read_target(targets / f.name)[0][: rec.shape[0]]
        g, p, _ = fastmri_crop(gt, rec)
        _, q, _ = fastmri_crop(gt, std)
        t.append(g.ravel()); r.append(p.ravel()); s.append(q.ravel())
    return calibration(np.concatenate(t)[None], np.concatenate(r)[None], np.concatenate(s)[None])


def analyse(root: Path, targets: Path, prior: str, R: float, l1_lambda: float) -> dict:
    auto, diff = root / f"auto-{prior}_R{R:g}", root / f"diffusion-{prior}_R{R:g}"
    m = {"auto": per_slice(auto, targets), "diffusion": per_slice(diff, targets),
         "l1-wavelet": per_slice(root / f"l1-wavelet_R{R:g}", targets), "sense": per_slice(root / f"sense_R{R:g}", targets)}
    keys = sorted(m["auto"])
    mean = {k: float(np.mean([m[k][s]["psnr"] for s in keys])) for k in m}
    best = max(("l1-wavelet", "sense"), key=lambda k: mean[k])
    d_best = np.array([m["auto"][s]["psnr"] - m[best][s]["psnr"] for s in keys])
    d_max = np.array([m["auto"][s]["psnr"] - max(m["l1-wavelet"][s]["psnr"], m["sense"][s]["psnr"]) for s in keys])
    d_diff = np.array([m["auto"][s]["psnr"] - m["diffusion"][s]["psnr"] for s in keys])
    d_dl1 = np.array([m["diffusion"][s]["psnr"] - m["l1-wavelet"][s]["psnr"] for s in keys])
    infos = slice_infos(auto)
    flags = np.array([bool(infos[s].get("ood_flag")) for s in keys])
    # the held-out-line rule (the flag when a prior has no OOD reference), from the same runs
    # (a slice without held-out lines is unguarded and has no held-out scores: not flagged by this rule)
    held = np.array([held_out_flag(infos[s].get("ood_db", -math.inf), infos[s].get("calibration_ratio", math.nan),
                                   GuardOptions()) for s in keys])
    loses = d_dl1 < 0
    choices: dict[str, int] = {}
    for s in keys:
        c = infos[s]["choice"].split(":")[0]
        choices[c] = choices.get(c, 0) + 1
    # held-out PSNR estimate per (slice, method), one range for every method: the CG-SENSE volume maximum (the
    # fastMRI range is the target's volume maximum, which does not depend on the method; a method's own maximum
    # would reward an artefact's bright spike). Two estimators: each candidate's own auxiliary (est_mse) and the
    # posterior spread for all (est_mse_spread, before 2026-12-03).
    peaks = volume_peaks(root / f"sense_R{R:g}")
    cand = {"diffusion": "diffusion", "l1-wavelet": f"l1-wavelet:{l1_lambda:g}", "sense": "sense"}
    # est_mse_magnitude (recorded since 2026-12-03, not used by the guard): est_mse x the share of the error that
    # survives the magnitude (selfval.magnitude_fraction); NaN for runs without it
    ests: dict[str, list] = {"est_mse": [], "est_mse_spread": [], "est_mse_magnitude": [], "outer": []}
    true, points, points_outer = [], [], []
    for s in keys:
        info = infos[s]
        for meth, c in cand.items():
            if c not in info.get("est_mse", {}):
                continue
            for key, out in ests.items():
                # runs from before est_mse_spread have the spread estimate as est_mse; before the magnitude share, none
                if key == "outer":
                    mse = outer_lines_mse(info, c)
                else:
                    mse = info.get(key, {} if key == "est_mse_magnitude" else info["est_mse"]).get(c, math.nan)
                mse *= info["scale"] ** 2
                out.append(selfval.estimated_psnr(mse, peaks[s[0]]) if math.isfinite(mse) else math.nan)
            true.append(m[meth][s]["psnr"])
            points.append([s[0], s[1], meth, R, ests["est_mse"][-1], true[-1]])
            if math.isfinite(ests["outer"][-1]):
                points_outer.append([s[0], s[1], meth, R, ests["outer"][-1], true[-1]])
    est = ests["est_mse"]
    rho = {k: float(stats.spearmanr(v, true).statistic) if len(v) > 2 and not any(map(math.isnan, v)) else math.nan
           for k, v in ests.items()}
    return {"prior": prior, "R": R, "slices": len(keys), "volumes": len({s[0] for s in keys}), "psnr": mean,
            "best_baseline": best, "auto_minus_best": ci95(d_best), "auto_minus_best_worst": float(d_best.min()),
            "auto_minus_slice_max_worst": float(d_max.min()), "auto_minus_diffusion": ci95(d_diff),
            "diffusion_minus_l1": ci95(d_dl1), "flagged": float(flags.mean()), "diffusion_loses": int(loses.sum()),
            "flag_recall": float(flags[loses].mean()) if loses.any() else math.nan, "choices": choices,
            "flagged_held_out_rule": float(held.mean()),
            "flag_recall_held_out_rule": float(held[loses].mean()) if loses.any() else math.nan,
            "score_ratio": [float(infos[s].get("ood_score_ratio", math.nan)) for s in keys],
            "spearman_est_vs_true": rho["est_mse"], "spearman_spread_aux": rho["est_mse_spread"], "est_pairs": len(est),
            "spearman_magnitude": rho["est_mse_magnitude"],
            "spearman_outer_ci": spearman_ci(points_outer), "est_points_outer": points_outer,
            "spearman_ci": spearman_ci(points), "est_points": points,
            "est_bias_db": float(np.mean([e - t for e, t in zip(est, true) if math.isfinite(e)])) if est else math.nan,
            "std_before": std_calibration(diff, targets), "std_after": std_calibration(auto, targets)}


def outer_lines_mse(info: dict, cand: str) -> float:
    """The guard's estimate of ``cand``'s per-pixel MSE (normalised units) with the innermost held-out line of each
    fold left out of the ratio: (sum of the other lines' errors / what the posterior expected there) x what it
    expects outside the mask (``selfval.ratio_estimate``, floor scaled to those lines). The innermost line sits
    next to the calibration block; held out, it widens the gap there and carries about half of the held-out
    error (BENCHMARKS.md, "The line next to the calibration block"). Needs ``held_out_lines`` (runs since
    2026-12-03; NaN otherwise, or with fewer than 2 lines per fold); runs without ``held_out_noise_var`` get no
    floor (it matters only where the held-out error is within the noise, as on a blank slice)."""
    lines, nv = info.get("held_out_lines"), info.get("held_out_noise_var", 0.0)
    if not lines or cand not in lines["error"]:
        return math.nan
    n = len(lines["radius"])
    per_fold = n // max(int(info["folds"]), 1)
    if per_fold < 2:
        return math.nan
    outer = np.arange(n) % per_fold != 0  # each fold lists its lines nearest the centre first
    e, x = np.asarray(lines["error"][cand])[outer], np.asarray(lines["expected"][cand])[outer]
    out = info["expected_unmeasured"][cand]
    full = selfval.ratio_estimate(info["held_out_error"][cand], info["expected_held_out"][cand], out, math.sqrt(nv))
    part = selfval.ratio_estimate(float(e.sum()), float(x.sum()), out, math.sqrt(nv * outer.mean()))
    if not (math.isfinite(full) and full > 0 and math.isfinite(part)):
        return math.nan
    return info["est_mse"][cand] * part / full  # est_mse = energy / (H W)


def spearman_ci(points: list, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman rank correlation of (estimate, true) over ``points`` [(file, slice, method, R, est, true), ...] and
    its 95 % percentile bootstrap interval, resampling slices (file, slice) with replacement: a slice's points
    (its methods, and its accelerations when pooled) stay together, because they share its anatomy and noise.
    Slices of one volume are correlated too, so the interval is optimistic; with 1-4 test volumes a volume
    bootstrap is degenerate."""
    if len(points) < 3:
        return math.nan, math.nan, math.nan
    by: dict[tuple, list] = {}
    for p in points:
        by.setdefault((p[0], p[1]), []).append((p[4], p[5]))
    keys = list(by)
    rho = lambda pts: float(stats.spearmanr([a for a, _ in pts], [b for _, b in pts]).statistic)  # noqa: E731
    rng = np.random.default_rng(seed)
    boot = [rho([q for i in rng.integers(0, len(keys), len(keys)) for q in by[keys[i]]]) for _ in range(reps)]
    boot = [b for b in boot if math.isfinite(b)]
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot else (math.nan, math.nan)
    return rho([q for k in keys for q in by[k]]), float(lo), float(hi)


def pooled_spearman(rows: list[dict]) -> list[dict]:
    """Per dataset x prior, the rank correlation over every acceleration's points together (the issue's "within
    each dataset"), with ``spearman_ci``; the per-acceleration rows stay in the main table."""
    out = []
    for key in dict.fromkeys((r["data"], r["prior"]) for r in rows):
        sel = [r for r in rows if (r["data"], r["prior"]) == key]
        pts = [p for r in sel for p in r["est_points"]]
        outer = [p for r in sel for p in r.get("est_points_outer", [])]
        out.append({"data": key[0], "prior": key[1], "R": [r["R"] for r in sel], "points": len(pts),
                    "slices": len({(p[0], p[1]) for p in pts}), "spearman": spearman_ci(pts),
                    "per_R": {f"{r['R']:g}": r["spearman_ci"] for r in sel},
                    "spearman_outer": spearman_ci(outer) if len(outer) == len(pts) else (math.nan,) * 3,
                    "per_R_outer": {f"{r['R']:g}": r.get("spearman_outer_ci", (math.nan,) * 3) for r in sel}})
    return out


def markdown(rows: list[dict], machine: str, seconds: float) -> list[str]:
    ci = lambda c: f"{c[0]:+.2f} [{c[1]:+.2f}, {c[2]:+.2f}]"  # noqa: E731
    mag = lambda r: "" if math.isnan(r.get("spearman_magnitude", math.nan)) else f" / {r['spearman_magnitude']:.2f}"  # noqa: E731
    lines = [f"Machine: {machine}; {seconds / 60:.0f} min for this table.", "",
             "| data | prior | R | slices (vols) | PSNR diff / L1 / SENSE / guarded | guarded - best baseline [95 % CI] "
             "(worst slice) | guarded - diffusion [95 % CI] | diffusion - L1 | flagged (held-out rule) "
             "| flag recall, diffusion < L1 (held-out rule) "
             "| choices | Spearman(est, true): own aux / spread aux (/ x magnitude share) | std corr / within 2 std: before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["psnr"]
        b, a = r["std_before"], r["std_after"]
        rec = "n/a" if math.isnan(r["flag_recall"]) else (f"{100 * r['flag_recall']:.0f} % of {r['diffusion_loses']} "
                                                          f"({100 * r['flag_recall_held_out_rule']:.0f} %)")
        lines.append(
            f"| {r['data']} | {r['prior']} | {r['R']:g} | {r['slices']} ({r['volumes']}) | {p['diffusion']:.2f} / "
            f"{p['l1-wavelet']:.2f} / {p['sense']:.2f} / {p['auto']:.2f} | {ci(r['auto_minus_best'])} vs "
            f"{r['best_baseline']} ({r['auto_minus_best_worst']:+.2f}) | {ci(r['auto_minus_diffusion'])} | "
            f"{ci(r['diffusion_minus_l1'])} | {100 * r['flagged']:.0f} % ({100 * r['flagged_held_out_rule']:.0f} %) | {rec} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(r['choices'].items()))} | {r['spearman_est_vs_true']:.2f} "
            f"[{r['spearman_ci'][1]:.2f}, {r['spearman_ci'][2]:.2f}] / "
            f"{r['spearman_spread_aux']:.2f}{mag(r)} | "
            f"{b['corr']:.2f} / {100 * b['within_2std']:.0f} % -> {a['corr']:.2f} / {100 * a['within_2std']:.0f} % |")
    lines += ["", "Spearman(estimate, true PSNR) within each dataset x prior, every acceleration's points together "
              "[95 % bootstrap CI over slices]:", "",
              "| data | prior | R | slices | points | Spearman [95 % CI] | per R | outer lines only: Spearman [95 % CI] "
              "| per R |", "|---|---|---|---|---|---|---|---|---|"]
    for p in pooled_spearman(rows):
        r, lo, hi = p["spearman"]
        per = ", ".join(f"{k}x {v[0]:.2f}" for k, v in p["per_R"].items())
        ro, lo_o, hi_o = p["spearman_outer"]
        per_o = ", ".join(f"{k}x {v[0]:.2f}" for k, v in p["per_R_outer"].items())
        lines.append(f"| {p['data']} | {p['prior']} | {', '.join(f'{x:g}' for x in p['R'])} | {p['slices']} | "
                     f"{p['points']} | {r:.2f} [{lo:.2f}, {hi:.2f}] | {per} | {ro:.2f} [{lo_o:.2f}, {hi_o:.2f}] | "
                     f"{per_o} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", required=True, help="NAME=FOLDER of test files")
    ap.add_argument("--prior", action="append", required=True, help="NAME=CHECKPOINT (or builtin, builtin-colin27)")
    ap.add_argument("--only", default=None, help="DATA:PRIOR,... pairs to run (default: all)")
    ap.add_argument("--val", type=Path, required=True, help="validation files for the L1 weight")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--accelerations", default="4,8")
    ap.add_argument("--max-slices", type=int, default=None)
    ap.add_argument("--fraction", type=float, default=0.15)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--few-step", action="store_true", help="posterior runs with the 10-call dds recipe")
    ap.add_argument("--cv-rule", choices=("min", "1se"), default=GuardOptions.fallback_rule,
                    help="GuardOptions.fallback_rule (--guard-cv-rule)")
    ap.add_argument("--no-cv-partner", dest="cv_partner", action="store_false",
                    help="GuardOptions.partner_cv=False (--no-guard-cv-partner): the blend's partner by held-out lines")
    ap.add_argument("--markdown", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    datasets = dict(x.split("=", 1) for x in a.dataset)
    priors = dict(x.split("=", 1) for x in a.prior)
    todo = [tuple(x.split(":")) for x in a.only.split(",")] if a.only else [(d, p) for d in datasets for p in priors]
    Rs = [float(r) for r in a.accelerations.split(",")]
    t0 = time.perf_counter()
    lams: dict[float, float] = {}
    base = baseline_methods(a.val, Rs, dev, log=lambda R, lam, sc: lams.__setitem__(R, lam))
    base = [m for m in base if m.name != "zero-filled"]
    print(f"L1 weights tuned on {a.val}: {lams}", flush=True)
    rows = []
    for dname, pname in todo:
        root = a.out / dname
        g = guard_method(f"auto-{pname}", priors[pname], dev, fraction=a.fraction, folds=a.folds, few_step=a.few_step,
                         partner_cv=a.cv_partner, fallback_rule=a.cv_rule)
        run_methods(Path(datasets[dname]), root, base + [g], Rs, dev, max_slices=a.max_slices, progress=False)
        for R in Rs:
            split_unguarded(root / f"auto-{pname}_R{R:g}", root / f"diffusion-{pname}_R{R:g}")
            r = analyse(root, Path(datasets[dname]), pname, R, lams[R])
            rows.append({"data": dname, **r})
            print(json.dumps(rows[-1], default=float), flush=True)
    lines = markdown(rows, machine_line(dev), time.perf_counter() - t0)
    print("\n".join(lines))
    a.out.mkdir(parents=True, exist_ok=True)
    tag = "_".join(f"{d}-{p}" for d, p in todo)
    (a.out / f"guard_{tag}.json").write_text(json.dumps(rows, indent=1, default=float))
    (a.out / f"guard_{tag}.md").write_text("\n".join(lines) + "\n")
    (a.out / f"guard_{tag}_pooled.json").write_text(json.dumps(pooled_spearman(rows), indent=1, default=float))


if __name__ == "__main__":
    main()
