"""Which classical reconstruction on a slice the prior must not touch: the guard's fallback choice (issue 20).

A slice the OOD score flags gets a classical reconstruction (``recon.guard``, ``flagged="classical"``): one of
L1-wavelet at the weights of ``GuardOptions.l1_grid`` and CG-SENSE, chosen from the measurements alone. This
script measures how well these rules choose, on the same masks as ``benchmarks/guard.py`` (``run_methods``):

- ``held-out``: the guard's own folds (``fraction`` 0.15, 2 folds: 4-6 lines per slice);
- ``cv``: K-fold cross-validation, every sampled line outside the calibration block held out once
  (``GuardOptions.fallback_folds``, ``selfval.cv_splits``);
- ``cv-1se``: the same folds, the one-standard-error rule (``recon.guard.one_se_choice``,
  ``GuardOptions.fallback_rule="1se"``): CG-SENSE unless the best L1-wavelet weight is better by more than one
  standard error of the per-line differences;
- ``cv-mix``: the same folds, but the cross-validated mix of the best candidate and the best of the other
  family (L1-wavelet / CG-SENSE), weight fitted on every held-out line (``recon.guard.classical_mix``,
  ``GuardOptions.fallback_mix``).

Each rule's choice is written as a method folder (``choice-heldout``, ``choice-cv``, ``choice-cvmix``,
``choice-cv1se``); every candidate with all lines is written too, so the oracle (per-slice best candidate) and
the figure's comparator (per slice max(L1-wavelet at the weight tuned on --val, CG-SENSE)) are scored from the
same files. Reported per dataset and
acceleration: mean PSNR, the rule - max(L1, SENSE) per slice (mean [95 % CI], worst slice), and the regret
against the oracle candidate.

Usage: python benchmarks/classical_choice.py --dataset knee=runs/knee128/multicoil_test
           --dataset siat=runs/siat128/multicoil_test --val runs/siat128/multicoil_val --out runs/choice
           [--max-slices 2] [--accelerations 4,8] [--folds 5]
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

from paired import ci95, per_slice  # noqa: E402
from recon.experiment import Method, baseline_methods, machine_line, run_methods  # noqa: E402
from recon.guard import GuardedRecon, GuardOptions, classical_mix, one_se_choice  # noqa: E402
from recon.pipeline import SliceResult  # noqa: E402


class Candidate:
    """One classical candidate of the guard, with all measured lines (a ``SliceMethod``)."""

    def __init__(self, guard: GuardedRecon, name: str):
        self.guard, self.name = guard, name

    def __call__(self, k, mask, maps, ctx) -> SliceResult:
        return SliceResult(self.guard._classical(self.name, k, mask, maps), {})


class Choice:
    """The classical candidate a rule picks (``held-out`` or ``cv``), refit on all lines; ``info`` records every
    candidate's error under the rule."""

    uses_noise_std = True  # the held-out errors subtract the noise (recon.pipeline estimates it)

    def __init__(self, guard: GuardedRecon, rule: str):
        self.guard, self.rule = guard, rule
        self.candidates = guard.candidates[1:]

    def __call__(self, k, mask, maps, ctx) -> SliceResult:
        item = (k, mask, maps, ctx)
        splits = self.guard.held_out_splits(mask, ctx) if self.rule == "held-out" else self.guard.cv_splits(mask, ctx)
        err, resid, lines = self.guard.classical_cv(item, splits, self.candidates)
        if not err:  # no lines to hold out: CG-SENSE, said in the info
            return SliceResult(self.guard._classical("sense", k, mask, maps), {}, info={"choice": "sense", "errors": err})
        best = one_se_choice(err, lines) if self.rule == "cv-1se" else min(err, key=err.get)
        a, b, w = classical_mix(err, resid) if self.rule == "cv-mix" else (best, best, 1.0)
        x = self.guard._classical(a, k, mask, maps)
        if w < 1:
            x = w * x + (1 - w) * self.guard._classical(b, k, mask, maps)
        return SliceResult(x, {}, info={"choice": a, "mix_with": b, "weight": w, "errors": err})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", required=True, help="NAME=FOLDER of test files")
    ap.add_argument("--val", type=Path, required=True, help="validation files for the comparator's L1 weight")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--accelerations", default="4,8")
    ap.add_argument("--max-slices", type=int, default=None)
    ap.add_argument("--folds", type=int, default=GuardOptions.fallback_folds, help="cross-validation folds")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    Rs = [float(r) for r in a.accelerations.split(",")]
    t0 = time.perf_counter()
    lams: dict[float, float] = {}
    base = [m for m in baseline_methods(a.val, Rs, dev, log=lambda R, lam, sc: lams.__setitem__(R, lam))
            if m.name != "zero-filled"]
    guard = GuardedRecon(None, GuardOptions(fallback_folds=a.folds))
    # the guard's virtual coils, so that its candidates see what they see inside `recon --method auto`
    from recon.diffusion import DEFAULT_VIRTUAL_COILS

    vc = DEFAULT_VIRTUAL_COILS
    cand = [Method(f"cand-{c.replace(':', '-')}", lambda R, c=c: Candidate(guard, c), virtual_coils=vc)
            for c in guard.candidates[1:]]
    rules = [Method(f"choice-{r.replace('-', '')}", lambda R, r=r: Choice(guard, r), virtual_coils=vc,
                    attrs={"folds": a.folds, "rule": r}) for r in ("held-out", "cv", "cv-mix", "cv-1se")]
    rows = []
    for spec in a.dataset:
        name, folder = spec.split("=", 1)
        root = a.out / name
        run_methods(Path(folder), root, base + cand + rules, Rs, dev, max_slices=a.max_slices, progress=False)
        for R in Rs:
            m = {x.name: per_slice(root / f"{x.name}_R{R:g}", Path(folder)) for x in base + cand + rules}
            keys = sorted(m["sense"])
            comp = np.array([max(m["l1-wavelet"][s]["psnr"], m["sense"][s]["psnr"]) for s in keys])
            oracle = np.array([max(m[c.name][s]["psnr"] for c in cand) for s in keys])
            row = {"data": name, "R": R, "slices": len(keys), "volumes": len({s[0] for s in keys}),
                   "l1_lambda": lams[R], "folds": a.folds,
                   "psnr": {x.name: float(np.mean([m[x.name][s]["psnr"] for s in keys])) for x in base + cand + rules}}
            for x in rules:
                p = np.array([m[x.name][s]["psnr"] for s in keys])
                row[x.name] = {"minus_max_l1_sense": ci95(p - comp), "worst": float((p - comp).min()),
                               "regret_vs_oracle": float((oracle - p).mean()), "worst_regret": float((oracle - p).max())}
            row["oracle_minus_max_l1_sense"] = float((oracle - comp).mean())
            rows.append(row)
            print(json.dumps(row), flush=True)
    ci = lambda c: f"{c[0]:+.2f} [{c[1]:+.2f}, {c[2]:+.2f}]"  # noqa: E731
    lines = [f"Machine: {machine_line(dev)}; {(time.perf_counter() - t0) / 60:.0f} min.", "",
             "| data | R | slices (vols) | L1 / SENSE | held-out rule - max(L1, SENSE) (worst) | "
             f"{a.folds}-fold CV - max(L1, SENSE) (worst) | CV mix - max(L1, SENSE) (worst) | "
             "CV one-SE rule - max(L1, SENSE) (worst) | regret vs oracle: held-out / CV / CV mix / one-SE | "
             "oracle - max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, c, x, o = r["choice-heldout"], r["choice-cv"], r["choice-cvmix"], r["choice-cv1se"]
        lines.append(f"| {r['data']} | {r['R']:g} | {r['slices']} ({r['volumes']}) | {r['psnr']['l1-wavelet']:.2f} / "
                     f"{r['psnr']['sense']:.2f} | {ci(h['minus_max_l1_sense'])} ({h['worst']:+.2f}) | "
                     f"{ci(c['minus_max_l1_sense'])} ({c['worst']:+.2f}) | {ci(x['minus_max_l1_sense'])} "
                     f"({x['worst']:+.2f}) | {ci(o['minus_max_l1_sense'])} ({o['worst']:+.2f}) | "
                     f"{h['regret_vs_oracle']:.2f} / {c['regret_vs_oracle']:.2f} / {x['regret_vs_oracle']:.2f} / "
                     f"{o['regret_vs_oracle']:.2f} | {r['oracle_minus_max_l1_sense']:+.2f} |")
    print("\n".join(lines))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "choice.json").write_text(json.dumps(rows, indent=1))
    (a.out / "choice.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
